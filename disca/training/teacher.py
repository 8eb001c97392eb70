"""Stage 1: the teacher, a flow-matching DiT (no r-embedder) with a learned word embedding,
trained with text dropout so that it supports classifier-free guidance."""

from __future__ import annotations

import torch

from disca.models import ModelConfig, VideoDiT
from disca.models.checkpoint import Checkpoint
from disca.models.text import WordEmbedding
from disca.task import VOCAB, sample_batch
from disca.training.evaluation import eval_teacher
from disca.training.flow import logit_normal, noisy
from disca.training.loop import TrainArgs, train
from disca.training.state import resume_point
from disca.vocab import NULL


def teacher_config(base: ModelConfig) -> ModelConfig:
    cfg = ModelConfig.from_dict(base.to_dict())
    cfg.dit.mean_flow = False
    cfg.vocab = [NULL, *VOCAB]
    return cfg


def train_teacher(out, base: ModelConfig, args: TrainArgs, text_dropout: float = 0.1, guidance: float = 4.0):
    resumed = resume_point(out, "teacher")
    if resumed:
        ckpt, start = resumed
    else:
        cfg = teacher_config(base)
        torch.manual_seed(args.seed)
        ckpt = Checkpoint(cfg, VideoDiT(cfg.dit), None, WordEmbedding(cfg.vocab, cfg.dit.text_dim))
        start = 0
    dit, text = ckpt.dit.to(args.device).train(), ckpt.text.to(args.device).train()

    def loss_fn(step, rng, gen):
        clips, prompts, _ = sample_batch(rng, args.batch, args.frames, args.size)
        x = torch.from_numpy(clips).to(args.device)
        ids = text.ids(prompts)
        drop = torch.rand(args.batch, generator=gen, device=args.device) < text_dropout
        ids = torch.where(drop[:, None], torch.zeros_like(ids), ids)  # the null prompt, for CFG
        e = torch.randn(x.shape, generator=gen, device=args.device)
        t = logit_normal(args.batch, gen, args.device)
        v = dit(noisy(x, e, t), t, t, text(ids))
        return torch.mean((v - (e - x)) ** 2), {}

    def evaluate():
        return eval_teacher(dit, text, args.eval_n, args.frames, args.size, guidance=guidance, device=args.device)

    params = list(dit.parameters()) + list(text.parameters())
    return train("teacher", out, ckpt, params, loss_fn, evaluate, args, start, {"text_dropout": text_dropout})
