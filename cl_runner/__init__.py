"""cl-runner: config-driven contrastive representation learning on images.

`cl_runner.load_encoder(run_dir)` and `cl_runner.embed(run_dir, images)` use a finished run's encoder in your own
code (cl_runner/trained.py), imported when first used: `cl-run`'s start does not wait for them."""

PUBLIC = ("load_encoder", "embed", "TrainedEncoder")


def __getattr__(name: str):
    if name in PUBLIC:
        from cl_runner import trained

        return getattr(trained, name)
    raise AttributeError(f"module 'cl_runner' has no attribute {name!r}")
