"""A five-member stand-in for issue #25's ensemble, for timing only (the same compute as five
members): run 3, recipe H seeds 1337 and 2027, HP seed 1337, and HP seed 1337 with its weights
perturbed by 0.1 % (OpenVINO merges identical branches, so every member must differ). Not a
candidate: its probabilities mean nothing.

    python benchmarks/recipe_h/stand_in_ensemble.py OUT.keras RUN3.keras H1337.keras H2027.keras HP1337.keras
    python benchmarks/bench.py --quick --model OUT.keras \
        --out benchmarks/recipe_h/speed_five_member_stand_in.json
"""

from __future__ import annotations

import sys

import keras
import numpy as np

from pneumo.models.ensemble import build_ensemble


def main(out: str, *paths: str) -> None:
    members = [keras.saving.load_model(p, compile=False) for p in (*paths, paths[-1])]
    rng = np.random.default_rng(0)
    for layer in members[-1].layers:  # the repeated last member, made distinct
        weights = layer.get_weights()
        if weights:
            layer.set_weights([w * (1 + 1e-3 * rng.standard_normal(w.shape)).astype(w.dtype)
                               if w.dtype.kind == "f" else w for w in weights])
    build_ensemble(members).save(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
