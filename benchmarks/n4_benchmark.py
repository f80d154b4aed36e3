"""Time N4 settings on real ACDC frames and measure how far each strays from N4 at defaults.

Reference: SimpleITK's N4BiasFieldCorrectionImageFilter at its own defaults (no shrink,
4 levels x 50 iterations, threshold 1e-3, 4 control points, FWHM 0.15, 200 bins), fitted
on the same log-Otsu foreground mask as every other setting, so that a difference is due to
shrinking or iterations, never to the mask. Agreement is measured inside the foreground and
inside the heart (ground-truth label > 0); both corrected images are first scaled to the
same median in that region, because an N4 field is only defined up to a factor.

    python benchmarks/n4_benchmark.py [--data DIR] [--frames N] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fedcmr.client.data.bias_field import foreground_mask, n4_log_bias_field
from fedcmr.client.data.prep_config import N4Params
from fedcmr.common.atomic import write_json

DEFAULT_DATA = Path("/work/shared/data/acdc-sample")
DEFAULT_OUT = Path(__file__).parent / "results" / "n4.json"


def reference_params() -> N4Params:
    """N4Params equal to SimpleITK's filter defaults, read from the filter itself."""
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    return N4Params(
        shrink_factor=1,
        iterations=tuple(n4.GetMaximumNumberOfIterations()),
        convergence_threshold=n4.GetConvergenceThreshold(),
        mask="otsu",
        control_points=int(n4.GetNumberOfControlPoints()[0]),
        histogram_bins=n4.GetNumberOfHistogramBins(),
        bias_field_fwhm=n4.GetBiasFieldFullWidthAtHalfMaximum(),
    )


def candidates() -> dict[str, N4Params]:
    """The fast settings tried; "chosen" is N4Params()'s defaults."""
    return {
        "chosen": N4Params(),
        "shrink2_it50x4": N4Params(shrink_factor=2),
        "shrink6_it50x4": N4Params(shrink_factor=6),
        "shrink4_it25x4": N4Params(iterations=(25, 25, 25, 25)),
        "shrink4_it50x3": N4Params(iterations=(50, 50, 50)),
        "shrink4_it50x4_nomask": N4Params(mask="none"),
    }


def find_frames(data: Path) -> list[Path]:
    """Image frames (not label maps, not 4D) under ``data``."""
    frames = sorted(data.glob("**/patient*_frame[0-9][0-9].nii.gz"))
    if not frames:
        raise SystemExit(f"no ACDC frames under {data}")
    return frames


def timed_field(image: sitk.Image, params: N4Params) -> tuple[np.ndarray, float]:
    """Log bias field as a (z, y, x) array and the seconds it took."""
    start = time.perf_counter()
    field = n4_log_bias_field(image, params)
    seconds = time.perf_counter() - start
    if field is None:
        raise RuntimeError("frame too small to fit")
    return sitk.GetArrayFromImage(field), seconds


def cached_reference(
    image: sitk.Image, frame: Path, params: N4Params, cache: Path | None
) -> tuple[np.ndarray, float]:
    """The reference field, from ``cache`` when this frame and these params were done."""
    if cache is None:
        return timed_field(image, params)
    key = hashlib.sha256(f"{frame.resolve()}|{params.model_dump_json()}".encode()).hexdigest()
    path = cache / f"{frame.name}.{key[:16]}.npz"
    if path.exists():
        stored = np.load(path)
        return stored["field"], float(stored["seconds"])
    field, seconds = timed_field(image, params)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, field=field, seconds=seconds)
    return field, seconds


def agreement(
    log_fast: np.ndarray, log_ref: np.ndarray, image: np.ndarray, fg: np.ndarray, heart: np.ndarray
) -> dict:
    """Correlation of the fields in the foreground and corrected-image differences."""
    corr = (
        float(np.corrcoef(log_fast[fg], log_ref[fg])[0, 1])
        if np.std(log_fast[fg]) > 0
        else float("nan")
    )
    return {
        "log_bias_corr_fg": corr,
        "reldiff_fg": corrected_reldiff(image, log_fast, log_ref, fg),
        "reldiff_heart": corrected_reldiff(image, log_fast, log_ref, heart),
    }


def corrected_reldiff(
    image: np.ndarray, log_fast: np.ndarray, log_ref: np.ndarray, region: np.ndarray
) -> dict:
    """Max and median relative difference of the corrected images, each first divided by
    its own median in ``region``."""
    fast = image[region] / np.exp(log_fast[region])
    ref = image[region] / np.exp(log_ref[region])
    fast /= np.median(fast)
    ref /= np.median(ref)
    diff = np.abs(fast - ref) / ref
    return {
        "max": float(diff.max()),
        "p99": float(np.percentile(diff, 99)),
        "median": float(np.median(diff)),
    }


def summarise(rows: list[dict]) -> dict:
    """Across frames: mean seconds, worst and median agreement."""
    out: dict = {"seconds_per_frame_mean": float(np.mean([r["seconds"] for r in rows]))}
    if "agreement" not in rows[0]:
        return out
    agree = [r["agreement"] for r in rows]
    corr = [a["log_bias_corr_fg"] for a in agree]
    out["log_bias_corr_fg_min"] = float(np.min(corr))
    out["log_bias_corr_fg_median"] = float(np.median(corr))
    for region in ("fg", "heart"):
        out[f"reldiff_{region}_max"] = float(max(a[f"reldiff_{region}"]["max"] for a in agree))
        out[f"reldiff_{region}_p99_max"] = float(max(a[f"reldiff_{region}"]["p99"] for a in agree))
        out[f"reldiff_{region}_median"] = float(
            np.median([a[f"reldiff_{region}"]["median"] for a in agree])
        )
    return out


def run_frame(frame: Path, settings: dict[str, N4Params], ref: N4Params, cache: Path | None):
    """All settings on one frame: per-setting seconds and agreement with the reference."""
    image = sitk.Cast(sitk.ReadImage(str(frame)), sitk.sitkFloat32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(frame).replace(".nii.gz", "_gt.nii.gz")))
    values = sitk.GetArrayFromImage(image)
    fg = foreground_mask(image, "otsu")
    heart = labels > 0
    log_ref, ref_seconds = cached_reference(image, frame, ref, cache)
    rows = {"reference": {"seconds": ref_seconds}}
    zero = np.zeros_like(log_ref)
    rows["uncorrected"] = {"seconds": 0.0, "agreement": agreement(zero, log_ref, values, fg, heart)}
    for name, params in settings.items():
        log_fast, seconds = timed_field(image, params)
        rows[name] = {
            "seconds": seconds,
            "agreement": agreement(log_fast, log_ref, values, fg, heart),
        }
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()), "rows": rows}


def print_table(summary: dict[str, dict]) -> None:
    """One line per setting: s/frame, field correlation, corrected-image differences (%)."""
    head = f"{'setting':22s} {'s/frame':>7s} {'corr min':>8s} {'corr med':>8s}"
    head += " | fg max% p99% med% | heart max% p99% med%"
    print(head)
    for name, s in summary.items():
        line = f"{name:22s} {s['seconds_per_frame_mean']:7.2f}"
        if "log_bias_corr_fg_min" in s:
            line += f" {s['log_bias_corr_fg_min']:8.4f} {s['log_bias_corr_fg_median']:8.4f} |"
            for region in ("fg", "heart"):
                for stat in ("max", "p99_max", "median"):
                    line += f" {100 * s[f'reldiff_{region}_{stat}']:5.1f}"
                line += " |"
        print(line.rstrip(" |"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("FEDCMR_ACDC_SAMPLE", DEFAULT_DATA))
    )
    parser.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--cache",
        default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "fedcmr-n4-reference"),
        help="where reference fields are kept between runs ('' to disable)",
    )
    args = parser.parse_args(argv)
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ACDC's "unexpected scales in sform"
    frames = find_frames(args.data)[: args.frames]
    ref, settings = reference_params(), candidates()
    cache = Path(args.cache) if args.cache else None
    per_frame = {}
    load_before = os.getloadavg()
    for frame in frames:
        per_frame[frame.name] = run_frame(frame, settings, ref, cache)
        print(
            f"{frame.name}: reference {per_frame[frame.name]['rows']['reference']['seconds']:.1f}s"
        )
    names = list(next(iter(per_frame.values()))["rows"])
    summary = {n: summarise([f["rows"][n] for f in per_frame.values()]) for n in names}
    print_table(summary)
    result = {
        "reference": {
            "description": "SimpleITK N4 defaults, no shrink, log-Otsu mask",
            "seconds_may_be_cached": cache is not None,
            "params": ref.model_dump(mode="json"),
        },
        "settings": {n: p.model_dump(mode="json") for n, p in settings.items()},
        "machine": {
            "cpus": os.cpu_count(),
            "simpleitk": sitk.Version.VersionString(),
            "python": platform.python_version(),
            "threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
            # Other work on the same cores slows every setting; judge timings by this.
            "loadavg_1_5_15_before": load_before,
            "loadavg_1_5_15_after": os.getloadavg(),
        },
        "frames": len(frames),
        "summary": summary,
        "per_frame": per_frame,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
