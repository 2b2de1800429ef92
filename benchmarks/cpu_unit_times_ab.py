"""Per-unit times inside whole frozen forwards for two plans of one model: "A" planned as the code stands, "B"
planned with one attribute of resnet_ext.engine.cpu (or several) set to another value (a rule's bound or dtype list)
during its first call, when the plan is made (with `always`: during every call of B, for what is read at run time).
Timestamps around every unit (cpu._conv, cpu._tail), each contender's timed forward right after an untimed one of
its own, rounds alternating which goes first; per unit the median over rounds, printed where A and B differ by more
than 3%; then the sums, the forwards and the per-round forward ratios. The logits' largest difference first
(relative to the largest logit).
Usage: python benchmarks/cpu_unit_times_ab.py ARCH BATCH fp32|bf16 ATTR VALUE [ATTR VALUE ...] [ROUNDS] [always]
(2 threads, idle machine; VALUE a Python expression, e.g. `... resnet50 1 bf16 DIRECT_STRIDES "()"`)."""
import copy
import statistics
import sys
import time

import torch
import torchvision

import resnet_ext
from resnet_ext.engine import cpu


def main() -> None:
    torch.set_num_threads(2)
    resnet_ext.cpu_replay(False)  # the units' Python wrappers timed here run only without the replay
    arch, batch, dt, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    always = "always" in rest
    rest = [a for a in rest if a != "always"]
    rounds = int(rest.pop()) if len(rest) % 2 else 12
    changes = {rest[i]: eval(rest[i + 1]) for i in range(0, len(rest), 2)}

    def setting(b: bool) -> None:  # B's values, or the saved ones
        for a, v in (changes if b else saved).items():
            setattr(cpu, a, v)
    saved = {a: getattr(cpu, a) for a in changes}
    base = resnet_ext.from_torchvision(getattr(torchvision.models, arch)().eval()).eval()
    base = base.to(memory_format=torch.channels_last)
    resnet_ext.freeze(base, dtype=torch.bfloat16 if dt == "bf16" else None)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    models = {"A": copy.deepcopy(base), "B": copy.deepcopy(base)}
    times, pc = [], time.perf_counter

    def timed(f):
        def g(*a):
            t = pc()
            out = f(*a)
            times.append(pc() - t)
            return out
        return g

    with torch.no_grad():
        out = {}
        for name, m in models.items():
            setting(name == "B")
            try:
                resnet_ext.reset_path_counts()
                out[name] = m(x)
                print(name, resnet_ext.path_counts())
            finally:
                setting(False)
        b_is = ", ".join(f"cpu.{a} = {v!r}" for a, v in changes.items())
        print(f"torch {torch.__version__}, {arch} frozen {dt}, batch {batch}, channels_last; B: {b_is}; "
              f"logits |A - B| / max |A| = {float((out['A'] - out['B']).abs().max() / out['A'].abs().max()):.2e}")
        cpu._conv, cpu._tail = timed(cpu._conv), timed(cpu._tail)
        per, total = {"A": [], "B": []}, {"A": [], "B": []}
        for r in range(rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                setting(always and name == "B")
                models[name](x)  # settle
                times.clear()
                t = pc()
                models[name](x)
                total[name].append(pc() - t)
                per[name].append(list(times))
        setting(False)
    med = {k: [statistics.median(p[i] for p in v) for i in range(len(v[0]))] for k, v in per.items()}
    for i, (a, b) in enumerate(zip(med["A"], med["B"])):
        if abs(a - b) > 0.03 * a:
            print(f"unit {i:3d}: A {1e6 * a:7.0f} us  B {1e6 * b:7.0f} us  B/A {b / a:.2f}")
    print(f"sum of units: A {1e3 * sum(med['A']):.2f} ms, B {1e3 * sum(med['B']):.2f} ms; forward: "
          f"A {1e3 * statistics.median(total['A']):.2f} ms, B {1e3 * statistics.median(total['B']):.2f} ms")
    print("per-round forward B/A:", sorted(round(b / a, 3) for a, b in zip(total["A"], total["B"])))


if __name__ == "__main__":
    main()
