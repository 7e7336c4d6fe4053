# Bytes copied per request by `uminfer serve --grpc` (its copied-bytes counter), identity and tiny, raw and system shared memory.
import sys, urllib.request, numpy as np, tritonclient.grpc as g, tritonclient.utils.shared_memory as shm
grpc_addr, metrics_addr = sys.argv[1], sys.argv[2]
c = g.InferenceServerClient(grpc_addr)
def copied(model):
    for line in urllib.request.urlopen(f"http://{metrics_addr}/metrics").read().decode().splitlines():
        if line.startswith("uminfer_inference_tensor_bytes_copied_total{") and f'model="{model}"' in line:
            return float(line.split()[-1])
    return 0.0
N = 20
for model in ["identity", "tiny"]:
    meta = c.get_model_metadata(model)
    i, o = meta.inputs[0], meta.outputs[0]
    x = np.random.rand(*i.shape).astype(np.float32)
    out_bytes = int(np.prod(o.shape)) * 4
    before = copied(model)
    for _ in range(N):
        inp = g.InferInput(i.name, list(i.shape), "FP32"); inp.set_data_from_numpy(x)
        c.infer(model, [inp], outputs=[g.InferRequestedOutput(o.name)])
    raw = (copied(model) - before) / N
    h_in = shm.create_shared_memory_region(f"{model}-in", f"/cp-{model}-in", x.nbytes)
    h_out = shm.create_shared_memory_region(f"{model}-out", f"/cp-{model}-out", out_bytes)
    shm.set_shared_memory_region(h_in, [x])
    c.register_system_shared_memory(f"{model}-in", f"/cp-{model}-in", x.nbytes)
    c.register_system_shared_memory(f"{model}-out", f"/cp-{model}-out", out_bytes)
    before = copied(model)
    for _ in range(N):
        inp = g.InferInput(i.name, list(i.shape), "FP32"); inp.set_shared_memory(f"{model}-in", x.nbytes)
        out = g.InferRequestedOutput(o.name); out.set_shared_memory(f"{model}-out", out_bytes)
        c.infer(model, [inp], outputs=[out])
    sh = (copied(model) - before) / N
    print(f"{model}: input {x.nbytes} B, output {out_bytes} B; tensor bytes copied per request: raw {raw:.0f}, system shared memory {sh:.0f}")
    c.unregister_system_shared_memory(f"{model}-in"); c.unregister_system_shared_memory(f"{model}-out")
    shm.destroy_shared_memory_region(h_in); shm.destroy_shared_memory_region(h_out)
