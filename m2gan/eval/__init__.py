"""Evaluation: image metrics on torch-fidelity features (``fid``), caption BLEU (``bleu``), the
shapes judge (``shapes_judge``) and the gathering of per-sample rows across processes (``gather``).

Plain torch and numpy: the Lightning callbacks in ``callbacks/`` decide when these run.
"""
