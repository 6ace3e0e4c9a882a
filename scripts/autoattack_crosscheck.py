"""Cross-check fatlib's AutoAttack against the reference called directly, on a kept record.

    .venv/bin/python scripts/autoattack_crosscheck.py RECORD [N]

Loads data/records/RECORD (it must keep weights.pt), takes the first N test images (default
500), and prints: PGD-50-10 accuracy (fatlib, alpha eps/4), fatlib's standard AutoAttack
accuracy (fatlib.evaluate.run_autoattack, seed 0) and the reference's own accuracy
(pyautoattack.AutoAttack(...).run_standard_evaluation with the same seed), and whether the
per-example results agree. Exit code 1 if they do not, or if AutoAttack is above PGD.
"""

import sys
import time

import torch

from fatlib import data, evaluate, runs
from fatlib.threat import ThreatModel


def main(name: str, n: int = 500) -> int:
    rec = runs.load_record(name)
    model, cfg = rec.model(), rec.config
    images, labels, source = data.load_with_source(cfg.dataset, "test", n=n)
    x, threat = data.to_float(images), ThreatModel(cfg.norm, cfg.eps)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    pgd = evaluate.evaluate(model, images, labels, threat, attacks=("pgd",), pgd_steps=50,
                            pgd_restarts=10)["pgd"]
    t1 = time.perf_counter()
    ours = evaluate.run_autoattack(model, x, labels, threat, seed=0)
    t2 = time.perf_counter()
    from pyautoattack import AutoAttack
    reference = AutoAttack(model.eval(), norm={"linf": "Linf", "l2": "L2"}[cfg.norm], eps=cfg.eps,
                           version="standard", seed=0, device=x.device)
    x_adv, _ = reference.run_standard_evaluation(x, labels, batch_size=250)  # (x_adv, y_adv)
    with torch.no_grad():
        theirs = model(x_adv).argmax(1) == labels
    agree = bool(torch.equal(ours.correct, theirs))
    print(f"record {name}: {cfg.model} {cfg.model_kw}, {cfg.method}, eps {cfg.eps * 255:.0f}/255; {source}")
    print(f"PGD-50-10 (fatlib)           {evaluate.accuracy(pgd):6.2f}%  ({t1 - t0:.0f} s)")
    print(f"AutoAttack standard (fatlib) {evaluate.accuracy(ours.correct):6.2f}%  ({t2 - t1:.0f} s)")
    print(f"AutoAttack standard (ref.)   {evaluate.accuracy(theirs):6.2f}%")
    print(f"per-example agreement: {agree}; flags: {ours.flags or 'none'}")
    return 0 if agree and evaluate.accuracy(ours.correct) <= evaluate.accuracy(pgd) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], *(int(a) for a in sys.argv[2:3])))
