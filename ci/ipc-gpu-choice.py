"""ci/ipc-gpu-choice.py BENCH_DIR — issue #5's GPU-server question, answered
from the `uminfer bench --json` files of one GPU run (ci/gpu-run's bench step
writes them to BENCH_DIR): should a GPU-mode `uminfer serve` copy each
shared-memory request into its session's managed input (what it does), or
register the client's segment as pinned memory (`cuMemHostRegister`) and let
the GPU take the request from there?

The figures it needs, all P50 on `tiny` unless named, from the same machine:
  C  `shm-ipc` with a GPU-mode server (`--server-mode gpu-*`): the copying
     server, end to end;
  G  `gpu-managed-graph` in process, from the same run as C: the same session
     without the transport and the copy;
  T  the hop through iceoryx2 alone: `identity` model at a small shape
     (`--shape 1,3,1,1`; at most SMALL elements), CPU server, `shm-ipc`
     minus `cpu-zero-copy`. Small, because at 196 KB the CPU server's read
     of the request would count, and a registering server leaves that read
     to the GPU (which R counts);
  R  the best registered variant could be, in process: the lowest P50 of
     `gpu-copy` and `gpu-pinned` captured in a graph (`--capture-graphs`),
     over every run that has them. A registered segment is page-locked host
     memory like those schemes' buffers; the GPU either copies the request
     out of it (as `gpu-copy`'s graph does) or reads it in place (as
     `gpu-pinned`'s does). A real server would do at least that work, and
     with a request address that changes every time, more.

Where several runs give a figure, the lowest counts (for C, with the G of
its run). R + T is a lower bound for a registering server. If C <= R + T, registering
cannot win and the copy stays; otherwise registering might save up to
C - (R + T) and is worth building. Prints the figures, where each came from
and the verdict; exit 0 with a verdict, 3 when a figure is missing.
"""
import json
import pathlib
import sys


def runs(folder):
    for path in sorted(pathlib.Path(folder).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("schema_version") == 2 and "results" in doc and doc.get("models"):
            yield path.name, doc


def p50(doc, scheme):
    for r in doc["results"]:
        if r["scheme"] == scheme and r["status"] == "ok":
            return r["p50_us"]
    return None


# Largest input, in elements, of the identity run that gives T.
SMALL = 1024


def elements(doc):
    """Input elements of the run's (first) model, all inputs together."""
    total = 0
    for i in doc["models"][0]["inputs"]:
        n = 1
        for d in i["shape"]:
            n *= d
        total += n
    return total


def model_is(doc, name):
    return pathlib.Path(doc["models"][0]["path"]).name == name + ".pt"


def main(folder):
    found = {}

    def lowest(key, value, source):
        """Keeps (value, source) under key if it is the lowest so far."""
        if key not in found or value < found[key][0]:
            found[key] = (value, source)
            return True
        return False

    for name, doc in runs(folder):
        server = doc.get("server_mode", "cpu")
        if model_is(doc, "tiny") and server.startswith("gpu"):
            c, g = p50(doc, "shm-ipc"), p50(doc, "gpu-managed-graph")
            if c is not None and g is not None and lowest("C", c, f"{name}: shm-ipc, server --mode {server}"):
                found["G"] = (g, f"{name}: gpu-managed-graph in process")
        if model_is(doc, "identity") and server == "cpu" and elements(doc) <= SMALL:
            s, z = p50(doc, "shm-ipc"), p50(doc, "cpu-zero-copy")
            if s is not None and z is not None:
                lowest("T", s - z, f"{name}: identity shm-ipc {s:.1f} - cpu-zero-copy {z:.1f}")
        if model_is(doc, "tiny") and doc.get("capture_graphs"):
            for scheme in ("gpu-copy", "gpu-pinned"):
                v = p50(doc, scheme)
                if v is not None:
                    staged = " --stage-input" if doc.get("stage_input") and scheme != "gpu-copy" else ""
                    lowest("R", v, f"{name}: {scheme} --capture-graphs{staged}")
    for key, what in (("C", "copying GPU server, end to end"), ("G", "same session in process"),
                      ("T", "shared-memory hop"), ("R", "best registered variant, in process")):
        if key in found:
            v, src = found[key]
            print(f"{key} = {v:8.1f} us  {what} ({src})")
        else:
            print(f"{key} = missing  {what}")
    if not all(k in found for k in "CTR"):
        print("verdict: not enough runs (see this script's docstring for the runs it needs)")
        return 3
    c, t, r = found["C"][0], found["T"][0], found["R"][0]
    # G comes with C, from the same run.
    print(f"the copying server adds {c - found['G'][0]:.1f} us over in process, of which the hop is {t:.1f} us")
    if c <= r + t:
        print(f"verdict: copy. C = {c:.1f} us <= R + T = {r + t:.1f} us, a lower bound for a registering server")
    else:
        print(f"verdict: registering might save up to {c - (r + t):.1f} us (C = {c:.1f} > R + T = {r + t:.1f}); worth building")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
