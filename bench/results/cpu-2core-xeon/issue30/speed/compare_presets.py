"""In one process, interleaved: the old classes (tests/reference_augment.py) against the compositions, draw +
params + apply of one view of 256 images, eager, as the sampler calls them. Blocks of 20 calls alternate; each
version's fastest block and median block are printed (the fastest is the least disturbed by the machine's
other load), and the median of the per-block ratios. Run from the repository root: python <this file>."""
import sys, time, statistics as st, torch
sys.path.insert(0, "tests")
import reference_augment as old
from conftest import preset
torch.manual_seed(0)
cases = {"guo mnist": (old.PadRotateScale(), preset("guo").view(1), torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8)),
         "simclr cifar10": (old.SimCLRAugment(), preset("simclr").view(1), torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8))}
for name, (before, after, x) in cases.items():
    def run_old(g):
        return before.apply(x, before.params(before.uniforms(len(x), g, x.device), x.shape[-2:]), False)
    def run_new(g):
        return after.apply(x, after.params(after.uniforms(len(x), tuple(x.shape[1:]), g, x.device), x.shape[-2:]), False)
    times = {"old": [], "new": []}
    for rep in range(21):
        for label, fn in (("old", run_old), ("new", run_new)) if rep % 2 else (("new", run_new), ("old", run_old)):
            g = torch.Generator().manual_seed(rep)
            start = time.perf_counter()
            for _ in range(20):
                fn(g)
            times[label].append((time.perf_counter() - start) / 20 * 1e3)
    ratio = [n / o for n, o in zip(times["new"], times["old"])]
    print(f"{name}: fastest block old {min(times['old']):.3f} ms, new {min(times['new']):.3f} ms per view "
          f"(ratio {min(times['new']) / min(times['old']):.3f}); median block old {st.median(times['old']):.3f}, new "
          f"{st.median(times['new']):.3f}; new/old per block: median {st.median(ratio):.3f}, "
          f"range {min(ratio):.3f} to {max(ratio):.3f}")
