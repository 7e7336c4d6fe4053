#!/usr/bin/env bash
set -u
export HOME=/tmp/fresh/home RUSTUP_HOME=/root/.rustup CARGO_HOME=/tmp/fresh/home/.cargo
export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /tmp/fresh && rm -rf mycrate && cargo new -q mycrate && cd mycrate
cat >> Cargo.toml <<'T'
uminfer = { path = "../uminfer", default-features = false }
anyhow = "1"

[build-dependencies]
uminfer-build = { path = "../uminfer/uminfer-build" }
T
printf 'fn main() {\n    uminfer_build::link();\n}\n' > build.rs
mkdir -p .cargo && printf '[env]\nLIBTORCH = "/tmp/fresh/uminfer/.libtorch"\n' > .cargo/config.toml
# the program of docs/embedding.md section 4, as the doc shows it
python3 - <<'P'
import re
doc = open('/tmp/fresh/uminfer/docs/embedding.md').read()
sec = doc[doc.index('## 4. A program'):]
code = re.search(r'```rust\n(.*?)```', sec, re.S).group(1)
open('src/main.rs', 'w').write(code)
P
cat Cargo.toml
t0=$(date +%s)
cargo run --release -- /tmp/fresh/uminfer/models/encoder.pt /tmp/fresh/uminfer/models/encoder.inputs.npz /tmp/fresh/uminfer/models/encoder.expected.npz 2>&1 | tail -6
echo "STEP embed build+run: $(( $(date +%s) - t0 )) s"
ldd target/release/mycrate | grep -E "libtorch_cuda|libcudart"
