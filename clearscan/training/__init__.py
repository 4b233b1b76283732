"""Training runs and evaluations: `service` (list, submit, get, cancel, compare), `runs` (the
`train` job), `evaluation` (the `evaluate` job) and `trainers/` (one per dataset kind). Table
datasets train with scikit-learn alone; image datasets need the ``train`` extra (torch, onnx),
which only `trainers/image.py` and the network modules it uses import."""
