"""Quality and cost of the demo models on a fixed prompt x seed set.

Prompt adherence of: real clips, the teacher (50-step CFG, torch), the student
(20 steps all-full) and DisCa (student + predictor, default anchors) on a bundle
(ONNX Runtime CPU); PSNR / SSIM of DisCa against the all-full student; network
passes and wall time of each.

    python scripts/eval_demo.py --teacher runs/teacher --bundle bundles/demo --n 64 [--json]
"""

from __future__ import annotations

import json
import time

import click
import numpy as np

from disca.metrics import psnr, ssim
from disca.runtime import Pipeline
from disca.task import sample_batch, score
from disca.training.evaluation import eval_set


@click.command()
@click.option("--teacher", "teacher_dir", help="Teacher checkpoint (skipped if not given).")
@click.option("--bundle", required=True)
@click.option("--n", default=64, show_default=True)
@click.option("--teacher-steps", default=50, show_default=True)
@click.option("--guidance", default=4.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def main(teacher_dir, bundle, n, teacher_steps, guidance, as_json):
    prompts, noise = eval_set(n, 8, 32)
    report = {"n": n}
    real, real_prompts, _ = sample_batch(np.random.default_rng(1), n, 8, 32)
    report["real"] = {"adherence": score(real, real_prompts)["all"]}

    with Pipeline.load(bundle) as pipe:
        outs = {}
        for name, anchors in (("student_full", "full"), ("disca", None)):
            clips, ms, passes = [], 0.0, 0
            for i, p in enumerate(prompts):
                t0 = time.perf_counter()
                video, stats = pipe.denoise(noise[i : i + 1], pipe.embed_prompt(p)[None], anchors=anchors)
                ms += (time.perf_counter() - t0) * 1e3
                passes += stats.full_calls + stats.predictor_calls
                clips.append(np.clip(video[0], -1, 1))
            outs[name] = np.stack(clips)
            report[name] = {
                "adherence": score(outs[name], prompts)["all"],
                "ms_per_clip": ms / n,
                "passes_per_clip": passes / n,
            }
        report["disca"]["psnr_vs_full"] = psnr(outs["disca"], outs["student_full"])
        report["disca"]["ssim_vs_full"] = ssim(outs["disca"], outs["student_full"])

    if teacher_dir:
        import torch

        from disca.models.checkpoint import load_checkpoint
        from disca.training.flow import sample_teacher

        teacher = load_checkpoint(teacher_dir, require_predictor=False)
        clips, t0 = [], time.perf_counter()
        with torch.no_grad():
            for i, p in enumerate(prompts):
                txt = teacher.text.encode([p])
                x = sample_teacher(
                    teacher.dit,
                    torch.from_numpy(noise[i : i + 1]),
                    txt,
                    teacher.text.null(1, 5),
                    teacher_steps,
                    guidance=guidance,
                )
                clips.append(x.clamp(-1, 1).numpy()[0])
        report["teacher_cfg"] = {
            "adherence": score(np.stack(clips), prompts)["all"],
            "ms_per_clip_torch": (time.perf_counter() - t0) * 1e3 / n,
            "passes_per_clip": 2 * teacher_steps,
        }
        report["disca"]["pass_ratio_vs_teacher"] = 2 * teacher_steps / report["disca"]["passes_per_clip"]

    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            click.echo(f"{k}: {v}")


if __name__ == "__main__":
    main()
