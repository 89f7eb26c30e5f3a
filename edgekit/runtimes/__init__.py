"""The runtimes a variant can run in, one module (or small package) each, all of one shape.

Each runtime module registers its variants in :mod:`edgekit.registry`, and the native ones
(ONNX Runtime, OpenVINO, llama.cpp) also offer ``export_artifact(variant, source, out_dir)``
(a verified artifact, through :func:`edgekit.artifact.cached_artifact`), a loader registered
with :func:`edgekit.artifact.artifact_loader` (artifact -> Runner) and ``self_test()`` (the
probe :mod:`edgekit.selftest` runs in a child process). A runtime's module is named after the
runtime: ``edgekit.runtimes.<runtime with '.' as '_'>``.
"""


def module_of(runtime: str) -> str:
    """``"llama.cpp"`` -> ``"edgekit.runtimes.llama_cpp"``."""
    return f"{__name__}.{runtime.replace('.', '_')}"
