#!/usr/bin/env python3
"""Device memory bandwidth of a GPU for the decode roofline, measured with torch.

    python3 bench/gpu_membw.py [--device cuda:0] [--mib 4096] [--reps 20] [--json]

Two measurements on a --mib buffer (far above the L2), best of --reps after a warm-up, timed
with CUDA events:
- copy: a device-to-device copy of N bytes reads N and writes N bytes. HBM reads and writes
  share one bus, so the bus moved (N read + N written) in the copy's time;
  read_gb_per_s = (bytes read + bytes written) / time is what a stream that only reads (a
  decode step reading weights) can reach. (The copy rate N / time, "copy_gb_per_s", is half
  of that and would put a read-bound decode above 100% of its roofline.)
- read only: a sum over the buffer as float32 (reads N, writes nothing), as a check.
Prints the copy-based read bandwidth in GB/s (1e9 bytes) on stdout, the rest on stderr;
--json prints every figure as one JSON object. Pass the figure to bench_engine.py
--bandwidth-gbs (bench_engine.py runs this script itself on --device cuda when
--bandwidth-gbs is not given).
"""
import argparse
import json
import sys


def timed(fn, reps, torch):
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    times.sort()
    return times[0], times[len(times) // 2]


def measure(device, mib, reps):
    import torch
    dev = torch.device(device)
    torch.cuda.set_device(dev)
    n = mib * 1024 * 1024
    src = torch.empty(n // 4, dtype=torch.float32, device=dev)
    src.uniform_()  # touched: no lazily mapped pages
    dst = torch.empty_like(src)
    best_copy, med_copy = timed(lambda: dst.copy_(src), reps, torch)
    acc = torch.empty((), dtype=torch.float32, device=dev)
    best_sum, med_sum = timed(lambda: torch.sum(src, out=acc), reps, torch)
    return {
        "device": torch.cuda.get_device_name(dev),
        "buffer_bytes": n,
        "copy_best_s": best_copy,
        "copy_median_s": med_copy,
        "copy_gb_per_s": n / best_copy / 1e9,
        "read_gb_per_s": 2 * n / best_copy / 1e9,  # (read + written) / time
        "sum_best_s": best_sum,
        "sum_median_s": med_sum,
        "read_only_gb_per_s": n / best_sum / 1e9,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--mib", type=int, default=4096, help="buffer size in MiB")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_membw: torch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_membw: no CUDA device visible to torch", file=sys.stderr)
        return 2
    r = measure(args.device, args.mib, args.reps)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['read_gb_per_s']:.1f}")
        print(f"gpu_membw: {r['device']}, {r['buffer_bytes'] / 2**20:.0f} MiB, best of "
              f"{args.reps}: copy {r['copy_best_s'] * 1e3:.3f} ms = {r['copy_gb_per_s']:.1f} GB/s "
              f"copied, {r['read_gb_per_s']:.1f} GB/s read + written; read-only sum "
              f"{r['read_only_gb_per_s']:.1f} GB/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
