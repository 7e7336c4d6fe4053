"""Triton's own clients over TLS against `uminfer serve --grpc --http --tls-cert --tls-key`.

    python tests/oip_tls_client.py GRPC_ADDR HTTP_ADDR CA_PEM MODELS_DIR

CA_PEM is the server's (self-signed) certificate, trusted as the only root.
gRPC (`tritonclient.grpc`, ssl=True: gRPC's TLS needs ALPN h2) and REST
(`tritonclient.http`, ssl=True, verifying the certificate): ServerLive,
ServerReady, and `tiny` on models/tiny.input.npy equal to
models/tiny.expected.npy. Then a gRPC client that trusts no such root must
fail (the certificate is checked, not ignored). Prints `ok` and exits 0, or
prints what failed and exits 1.
"""
import os
import sys

import numpy as np


def main():
    grpc_addr, http_addr, ca, models_dir = sys.argv[1:5]
    import gevent.ssl
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    x = np.load(os.path.join(models_dir, "tiny.input.npy"))
    expected = np.load(os.path.join(models_dir, "tiny.expected.npy"))
    failures = []

    def check_tiny(kind, tm, client):
        inp = tm.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("tiny", [inp], outputs=[tm.InferRequestedOutput("output__0")]).as_numpy("output__0")
        if got is None or got.shape != expected.shape or float(np.abs(got - expected).max()) > 1e-5:
            failures.append(f"{kind}: tiny's answer differs from models/tiny.expected.npy")

    g = tg.InferenceServerClient(grpc_addr, ssl=True, root_certificates=ca)
    if not (g.is_server_live() and g.is_server_ready()):
        failures.append("gRPC over TLS: not live and ready")
    check_tiny("gRPC over TLS", tg, g)
    g.close()

    def context():
        return gevent.ssl.create_default_context(cafile=ca)

    h = th.InferenceServerClient(http_addr, ssl=True, ssl_context_factory=context)
    if not (h.is_server_live() and h.is_server_ready()):
        failures.append("REST over TLS: not live and ready")
    check_tiny("REST over TLS", th, h)
    h.close()

    # No root given: gRPC trusts the system's roots, which do not hold this certificate.
    untrusting = tg.InferenceServerClient(grpc_addr, ssl=True)
    try:
        untrusting.is_server_live(client_timeout=10)
        failures.append("gRPC over TLS without the certificate as a root: answered (the certificate went unchecked)")
    except InferenceServerException:
        pass
    untrusting.close()

    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
