"""The `asr` task: connected-digit recognition with CTC blank-triggered dynamic layer skipping.

Data: FSDD spoken digits joined into utterances of 1 to 7 digits of one speaker (``fsdd.py``);
model: conv subsampling + Transformer encoder, final and intermediate CTC heads, skipping of the
top layers for frames the intermediate head calls blank (``ctc_skip.py``, with the paper).

Metrics (``evaluate``), decoding greedily, `eval_batch` utterances per call (the split sorted
by length, so a call pads little; 1: one utterance at a time):

    wer                 word error rate, a digit is a word ("3 1 4")
    cer                 character error rate over the spelled-out words ("three one four")
    skipped_fraction    layer-frames skipped / layer-frames of a full run
                        = sum(skipped frames) * (L - k) / (sum(frames) * L)
    encoder_ms_per_utt  wall time of features -> log-probs over the split / its utterances,
                        without the feature extraction; skipping when skip_threshold < 1, else
                        the plain model
    encoder_cpu_ms_per_utt  the same in CPU time of the calling thread (torch with one thread
                        computes there): on a shared machine, wall time mostly measures waiting
                        for a core, CPU time what the model itself costs

Speaker independence (FSDD has five speakers): 13 cepstral coefficients (MFCC) normalised in
mean and variance over each speaker's utterances in the set (`norm`: in evaluation the split
scored, so an unseen speaker is normalised over his own recordings, unsupervised adaptation), and
on training utterances speed perturbation, vocal-tract-length perturbation and SpecAugment's
masks (`perturbed`, `masked`). In evaluation, `warp_search` adds test-time vocal-tract-length
normalisation: each speaker scored is decoded with the mel filters warped by the factor of a grid
on which the model is most confident (`warp_scores`, `search_warps`; no labels), optionally
averaging the posteriors of his best few warps (`warp_ensemble`). By default every recording of the data folder
trains (`train_on="all"`): the measure of generalisation is a speaker the model never heard,
`holdout` within the folder (split "heldout") or a folder of its own (split "all").

Launch (the task's `recipe`: Adam, lr 3e-3, synchronous over the learners, cosine decay to lr/10)::

    gadei train --task asr --learners 2 --data-dir D --out runs/asr
    gadei eval --task asr --checkpoint runs/asr --split all --data-dir FOLDER_OF_ONE_SPEAKER
    gadei train --task asr --learners 2 --data-dir D --holdout theo --out runs/loso/theo   # LOSO

What it measured: docs/results/asr.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import jiwer
import numpy as np
import torch

from gadei.task import option

from ..common import check_learner, data_dir_option, data_root, data_option, use_real_data
from . import fsdd
from .ctc_skip import CTCSkipEncoder, ctc_losses, greedy


@dataclass(kw_only=True, eq=False)
class ASR:
    """Connected FSDD digits with CTC blank-triggered layer skipping.

    The module docstring has the details; each option's help line says what it sets.
    """

    data: str = data_option("fsdd")   # a WAV folder or tar(.gz) also works: fsdd.find_source
    data_dir: str | None = data_dir_option()
    speakers: str = option("", "comma-separated speaker names to use (empty: all in the source)")
    holdout: str = option("", "comma-separated speakers left out of training; split 'heldout' is every "
                              "recording of theirs (leave-one-speaker-out), and the job's evaluation")
    train_on: str = option("all", "recordings that train: 'all' (every index of the training speakers; "
                                  "valid and test then overlap training) or 'train' (indices 10+ only)")
    batch: int = option(8, "utterances per training batch of one learner (the recipe's two SYNC learners: "
                           "16 per update)")
    max_digits: int = option(7, "most digits in one joined utterance (of one speaker)")
    noise: float = option(0.002, "standard deviation of the white noise in joined utterances (full scale 1)")
    level: float = option(0.05, "each recording scaled to this RMS before joining (full scale 1; 0: as recorded)")
    gain: float = option(10.0, "training recordings' level varied by a random gain of up to +-gain dB")
    n_mels: int = option(40, "log-mel bins per frame")
    cepstra: int = option(13, "K > 0: the features are the first K cepstral coefficients of the log-mels "
                              "(DCT over the mel bins, MFCC), smoother, with less of the speaker's pitch; "
                              "0: the log-mels themselves")
    norm: str = option("speaker", "feature mean/variance normalisation over all of a 'speaker''s utterances in "
                                  "the set (training: a learner's epoch; evaluation: the split scored, i.e. "
                                  "unsupervised adaptation to the speakers scored) or over each 'utterance'")
    d_model: int = option(64, "encoder width")
    heads: int = option(4, "attention heads per layer")
    layers: int = option(6, "encoder layers (L)")
    inter_layer: int = option(3, "layer of the intermediate CTC head (k); frames skip the layers above it")
    ff_dim: int = option(256, "feed-forward size of each layer")
    conv_channels: int = option(32, "channels of the convolutional subsampling")
    dropout: float = option(0.2, "dropout in the encoder (0.2 beat 0.1 on unseen speakers: "
                                 "docs/results/asr.md, round 5)")
    speed: float = option(0.1, "speed perturbation: each training utterance plays at a factor drawn from "
                               "[1 - speed, 1 + speed] (0: off)")
    tempo: float = option(0.0, "tempo perturbation: each training utterance's feature frames stretched to play "
                               "at a factor from [1 - tempo, 1 + tempo], pitch and formants unchanged (0: off)")
    vtlp: float = option(0.1, "vocal-tract-length perturbation: each training utterance's mel filter "
                              "frequencies scaled by a factor from [1 - vtlp, 1 + vtlp] (0: off)")
    freq_masks: int = option(2, "SpecAugment: frequency masks per training utterance")
    freq_mask_width: int = option(3, "SpecAugment: widest frequency mask, in feature bins (cepstra or mels)")
    time_masks: float = option(1.0, "SpecAugment: time masks per second of training utterance")
    time_mask_width: int = option(8, "SpecAugment: widest time mask, in 10 ms frames")
    inter_ctc_weight: float = option(0.3, "w in (1 - w) CTC_final + w CTC_inter (0 turns intermediate CTC off)")
    factorized: bool = option(True, "intermediate head: sigmoid blank + softmax over the digits")
    distill_weight: float = option(1.0, "weight of KL(final || intermediate) (0 turns distillation off)")
    skip_threshold: float = option(0.99, "intermediate P(blank) above which a frame skips the top layers "
                                         "in evaluate (>= 1: no skipping)")
    spike_extension: int = option(1, "kept frames also keep this many neighbours")
    eval_batch: int = option(16, "utterances per encoder call in evaluate")
    eval_rounds: int = option(1, "valid and test join their recordings this many times, each time into "
                                 "other utterances, so a split of 250 digits scores 250 x eval_rounds")
    seed: int = option(0, "composes the valid and test utterances")
    warp_search: str = option("", "test-time vocal-tract-length normalisation, 'LO:HI:STEP' (e.g. 0.86:1.14:0.02; "
                                  "'': off): in evaluate, each speaker's features are taken with the mel filters "
                                  "warped by the factor of that grid on which the model is most confident (the "
                                  "mean log-probability per frame of its greedy CTC path over all the speaker's "
                                  "utterances scored; no labels); the factors chosen are reported as warp_SPEAKER")
    warp_ensemble: int = option(1, "with warp_search: decode the average of the CTC posteriors of the best this "
                                   "many warps of each speaker (1: the best warp alone)")

    # the default `gadei train --task asr` (docs/results/asr.md, round 7): the measured loop's
    # Adam (warm-up, cosine decay to lr/10, gradient norm clipped to 5) as synchronous data
    # parallelism, each round the average of the learners' gradients (2 learners x 8 utterances:
    # the loop's batch of 16); 8,000 learner steps = 4,000 updates with 2 learners. Asynchronous
    # Adam (ASGD) generalised worse to unseen speakers (round 7).
    recipe: ClassVar[dict] = {"optimizer": "sync", "update": "adam", "lr": 3e-3, "lr_schedule": "cosine",
                              "lr_warmup": 100, "lr_floor": 0.1, "clip_grad_norm": 5.0, "steps": 8000}
    splits: ClassVar[tuple[str, ...]] = fsdd.SPLITS + ("heldout",)

    def __post_init__(self):
        self.real = use_real_data(self.data, self.data_dir)
        if self.train_on not in ("all", "train"):
            raise ValueError(f"train_on must be 'all' or 'train', not {self.train_on!r}")
        if self.norm not in ("utterance", "speaker"):
            raise ValueError(f"norm must be 'utterance' or 'speaker', not {self.norm!r}")
        if not 0 <= self.cepstra <= self.n_mels:
            raise ValueError(f"cepstra must be in 0..n_mels ({self.n_mels}), got {self.cepstra}")
        if self.level < 0 or self.gain < 0:
            raise ValueError(f"level and gain must be >= 0, got level={self.level}, gain={self.gain}")
        if not 0.0 <= self.speed < 1.0 or not 0.0 <= self.tempo < 1.0 or not 0.0 <= self.vtlp < 0.5:
            raise ValueError(f"speed and tempo must be in [0, 1) and vtlp in [0, 0.5), got speed={self.speed}, "
                             f"tempo={self.tempo}, vtlp={self.vtlp}")
        if min(self.freq_masks, self.freq_mask_width, self.time_masks, self.time_mask_width) < 0:
            raise ValueError("SpecAugment's mask counts and widths must be >= 0")
        if self.batch < 1 or self.eval_batch < 1:
            raise ValueError(f"batch sizes must be >= 1, got batch={self.batch}, eval_batch={self.eval_batch}")
        if self.eval_rounds < 1:
            raise ValueError(f"eval_rounds must be >= 1, got {self.eval_rounds}")
        if not 0.0 <= self.inter_ctc_weight < 1.0:
            raise ValueError(f"inter_ctc_weight must be in [0, 1), got {self.inter_ctc_weight}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.inter_ctc_weight == 0 and self.distill_weight == 0:
            raise ValueError("inter_ctc_weight and distill_weight are both 0: the intermediate head that "
                             "decides skipping would never be trained; make one of them positive")
        if self.spike_extension < 0:
            raise ValueError(f"spike_extension must be >= 0 frames, got {self.spike_extension}")
        self.speaker_list = [s.strip() for s in self.speakers.split(",") if s.strip()]
        self.holdout_list = [s.strip() for s in self.holdout.split(",") if s.strip()]
        if self.speaker_list and set(self.holdout_list) - set(self.speaker_list):
            raise ValueError(f"holdout {self.holdout!r} names speakers outside speakers={self.speakers!r}")
        # what the job's evaluation (and `gadei eval` without --split) scores
        self.eval_split = "heldout" if self.holdout_list else "test"
        self.model_options = dict(n_mels=self.cepstra or self.n_mels, d_model=self.d_model, heads=self.heads,
                                  layers=self.layers, inter_layer=self.inter_layer, ff_dim=self.ff_dim,
                                  conv_channels=self.conv_channels, dropout=self.dropout,
                                  factorized=bool(self.factorized))
        CTCSkipEncoder(**self.model_options)          # fail now on an impossible shape, not mid-run
        self.fbank = fsdd.mel_filterbank(self.n_mels)
        self.warps = warp_grid(self.warp_search)
        if not 1 <= self.warp_ensemble <= max(1, len(self.warps)):
            raise ValueError(f"warp_ensemble must be in 1..{max(1, len(self.warps))} (the factors of "
                             f"warp_search={self.warp_search!r}), got {self.warp_ensemble}")
        # every warped filterbank built now: a grid that empties a mel filter fails here, not mid-run
        self.warp_fbanks = {a: fsdd.mel_filterbank(self.n_mels, warp=a) for a in self.warps}
        self._recordings: list[fsdd.Recording] | None = None
        self._eval_utts: dict[str, list[list[fsdd.Utterance]]] = {}
        self._eval: dict[tuple[str, float], tuple[list[torch.Tensor], list[tuple[int, ...]]]] = {}

    # -- data ------------------------------------------------------------------------------------

    @property
    def recordings(self) -> list[fsdd.Recording]:
        if self._recordings is None:
            if self.real:
                source = fsdd.find_source(data_root(self.data_dir))
                self._recordings = fsdd.load_recordings(source, self.speaker_list or None)
            else:
                recs = fsdd.generated_recordings()
                if self.speaker_list:
                    recs = [r for r in recs if r.speaker in self.speaker_list]
                    if not recs:
                        raise ValueError(f"generated data has speakers gen0, gen1, gen2, not {self.speakers!r}")
                self._recordings = recs
        return self._recordings

    def split_recordings(self, split: str) -> list[fsdd.Recording]:
        """The recordings of a split:

            all       every recording in the source (e.g. a folder of one unseen speaker's WAVs)
            heldout   every recording of the `holdout` speakers
            train     the other speakers' recordings, every index (train_on="all") or 10+ ("train")
            valid     the other speakers' indices 5-9
            test      the other speakers' indices 0-4
        """
        if split not in self.splits:
            raise ValueError(f"asr has no split {split!r}: its splits are {', '.join(self.splits)}")
        if split == "all":
            recs = self.recordings
        else:
            names = {r.speaker for r in self.recordings}
            missing = sorted(set(self.holdout_list) - names)
            if missing:
                raise ValueError(f"holdout speaker(s) {', '.join(missing)} not in the data (it holds "
                                 f"{', '.join(sorted(names))}); use --split all to score every recording")
            if split == "heldout":
                if not self.holdout_list:
                    raise ValueError("split 'heldout' needs the holdout option (speakers left out of training)")
                recs = [r for r in self.recordings if r.speaker in self.holdout_list]
            else:
                recs = [r for r in self.recordings if r.speaker not in self.holdout_list]
                recs = fsdd.select(recs, "all" if split == "train" and self.train_on == "all" else split)
        if not recs:
            raise ValueError(f"no recordings in split {split!r} (indices: test 0-4, valid 5-9, train 10+)")
        return recs

    def utterances(self, split: str, seed) -> list[fsdd.Utterance]:
        return fsdd.join(self.split_recordings(split), seed, self.max_digits, noise=self.noise, level=self.level)

    def raw_features(self, audio: np.ndarray, fbank: torch.Tensor) -> torch.Tensor:
        """(T, n_mels or cepstra) features of one utterance before normalisation."""
        feats = fsdd.log_mel(audio, fbank, normalize=False)
        return fsdd.cepstra(feats, self.cepstra) if self.cepstra else feats

    def normalized(self, feats: list[torch.Tensor], utts: list[fsdd.Utterance]) -> list[torch.Tensor]:
        """Mean/variance normalised per utterance or per speaker (`norm`): either removes the
        channel and the loudness; over a speaker's utterances it also removes that speaker's
        average spectrum with statistics steadier than one short utterance's."""
        groups = range(len(utts)) if self.norm == "utterance" else [u.speaker for u in utts]
        return fsdd.normalize(feats, list(groups))

    def features(self, utts: list[fsdd.Utterance], fbank: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Normalised features of a set of utterances (`norm` decides over what), taken with
        `fbank` (a warped filterbank) or the plain one."""
        fbank = self.fbank if fbank is None else fbank
        return self.normalized([self.raw_features(u.audio, fbank) for u in utts], utts)

    def perturbed(self, utt: fsdd.Utterance, rng: np.random.Generator) -> torch.Tensor:
        """Unnormalised features of a training utterance (its recordings' gains already drawn in
        `batches`), perturbed so that the model meets more voices than the training speakers':
        speed (tempo and pitch), vocal-tract length (formants), tempo alone."""
        audio = utt.audio
        if self.speed:
            audio = fsdd.speed_perturb(audio, rng.uniform(1 - self.speed, 1 + self.speed))
        fbank = self.fbank
        if self.vtlp:
            fbank = fsdd.mel_filterbank(self.n_mels, warp=rng.uniform(1 - self.vtlp, 1 + self.vtlp))
        feats = self.raw_features(audio, fbank)
        return fsdd.stretch(feats, rng.uniform(1 - self.tempo, 1 + self.tempo)) if self.tempo else feats

    def masked(self, feats: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """SpecAugment's masks on normalised features (the masked values are the mean, 0)."""
        time_masks = int(rng.poisson(self.time_masks * len(feats) / 100)) if self.time_masks else 0
        return fsdd.spec_augment(feats, rng, self.freq_masks, self.freq_mask_width, time_masks,
                                 self.time_mask_width)

    def eval_utterances(self, split: str) -> list[list[fsdd.Utterance]]:
        """A split's fixed utterances, one list per round (composed from `seed`; round 0 is the
        same whatever eval_rounds), cached."""
        if split not in self._eval_utts:
            self.split_recordings(split)                  # a clear error for a bad split name
            index = fsdd.SPLITS.index("all" if split == "heldout" else split)   # heldout = all of one folder
            self._eval_utts[split] = [self.utterances(split, [self.seed, index] + ([r] if r else []))
                                      for r in range(self.eval_rounds)]
        return self._eval_utts[split]

    def eval_set(self, split: str, warp: float = 1.0) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
        """Features and digits of a split's fixed utterances (each round normalised on its own),
        the mel filters warped by `warp` (a factor of warp_search's grid, or 1), cached."""
        if (split, warp) not in self._eval:
            fbank = self.fbank if warp == 1.0 else self.warp_fbanks[warp]
            rounds = self.eval_utterances(split)
            feats = [f for utts in rounds for f in self.features(utts, fbank)]
            self._eval[split, warp] = (feats, [u.digits for utts in rounds for u in utts])
        return self._eval[split, warp]

    def eval_speakers(self, split: str) -> list[str]:
        """The speaker of each utterance of eval_set(split), in its order."""
        return [u.speaker for utts in self.eval_utterances(split) for u in utts]

    @staticmethod
    def pad(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of several utterances -> zero-padded (B, T, M) and lengths (B,)."""
        lens = torch.tensor([len(f) for f in feats])
        x = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1])
        for i, f in enumerate(feats):
            x[i, :len(f)] = f
        return x, lens

    def collate(self, feats: list[torch.Tensor], digits: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
        x, lens = self.pad(feats)
        tl = torch.tensor([len(d) for d in digits])
        y = torch.zeros(len(digits), int(tl.max()), dtype=torch.long)           # (B, S), labels 1..10
        for i, d in enumerate(digits):
            y[i, :len(d)] = torch.tensor(d) + 1
        return {"feats": x, "lens": lens, "targets": y, "target_lens": tl}

    def batches(self, learner: int, learners: int, seed: int):
        """One epoch of this learner's shard: its train recordings (every learners-th, so shards are
        disjoint whatever the seeds) joined into fresh utterances by `seed`, shuffled, augmented
        (`perturbed`, normalised over the epoch's utterances per `norm`, `masked`), batched."""
        check_learner(learner, learners)
        shard = self.split_recordings("train")[learner::learners]
        utts = fsdd.join(shard, [self.seed, seed, learner], self.max_digits, noise=self.noise, level=self.level,
                         gain_db=self.gain)
        order = np.random.default_rng([seed, learner]).permutation(len(utts))
        rng = np.random.default_rng([self.seed, seed, learner, 1])
        feats = self.normalized([self.perturbed(u, rng) for u in utts], utts)
        for start in range(0, len(order), self.batch):
            chosen = order[start:start + self.batch]
            yield self.collate([self.masked(feats[j], rng) for j in chosen], [utts[j].digits for j in chosen])

    @staticmethod
    def batch_size(batch) -> int:
        return int(batch["feats"].shape[0])

    # -- model and loss --------------------------------------------------------------------------

    def build_model(self) -> CTCSkipEncoder:
        return CTCSkipEncoder(**self.model_options)

    def loss(self, model, batch) -> torch.Tensor:
        """(1 - w) CTC_final + w CTC_inter + lambda KL(sg(P_final) || P_inter)."""
        parts = ctc_losses(model, batch["feats"], batch["lens"], batch["targets"], batch["target_lens"])
        w = self.inter_ctc_weight
        return (1 - w) * parts["final"] + w * parts["inter"] + self.distill_weight * parts["kd"]

    # -- evaluation ------------------------------------------------------------------------------

    def warp_scores(self, model, split: str) -> dict[str, dict[float, float]]:
        """Each speaker of the split -> {warp_search factor: the model's confidence on his
        utterances with the filters warped by it}. Confidence: the log-probability of the greedy
        CTC path (each frame's best label), summed over all frames of the speaker's utterances,
        per frame. No labels: the model's own first-pass path stands in for the transcript."""
        speakers = self.eval_speakers(split)
        scores: dict[str, dict[float, float]] = {s: {} for s in dict.fromkeys(speakers)}
        model.eval()
        with torch.inference_mode():
            for a in self.warps:
                feats = self.eval_set(split, a)[0]
                total, frames = dict.fromkeys(scores, 0.0), dict.fromkeys(scores, 0)
                for start in range(0, len(feats), self.eval_batch):
                    chosen = range(start, min(start + self.eval_batch, len(feats)))
                    lp, out_lens = model.full(*self.pad([feats[i] for i in chosen]))
                    best = lp.max(-1).values                                   # (B, T)
                    for i, row, n in zip(chosen, best, out_lens.tolist()):
                        total[speakers[i]] += float(row[:n].sum())
                        frames[speakers[i]] += n
                for s in scores:
                    scores[s][a] = total[s] / max(frames[s], 1)
        return scores

    def search_warps(self, model, split: str) -> dict[str, list[float]]:
        """Each speaker of the split -> the warp_search factors, highest `warp_scores` first
        (ties: the one nearer 1). The choice of classical VTLN, the warp under which the model
        finds the speaker's audio likeliest (Lee and Rose 1996), with the model's first-pass path
        for the transcript; per frame, so each utterance weighs as much as its length."""
        return rank_warps(self.warp_scores(model, split))

    def transcribe(self, model, split: str, threshold: float, warps: dict[str, list[float]] | None = None) -> dict:
        """Decode a split, `eval_batch` utterances per call in order of length -> hyps, refs (in
        the split's order), each call's encoder ms (wall and CPU), frames skipped and frames in
        all. threshold >= 1 runs the plain model (no skipping). With warp_search, each speaker's
        features are those of his best warps (`warps`, from search_warps, run here when not
        given), the CTC posteriors of his `warp_ensemble` best averaged (the ms count every
        member's encoder call; the search is not in them)."""
        feats, refs = self.eval_set(split)
        members = [feats]
        if self.warps:
            warps = self.search_warps(model, split) if warps is None else warps
            speakers = self.eval_speakers(split)
            members = [[self.eval_set(split, warps[s][k])[0][i] for i, s in enumerate(speakers)]
                       for k in range(self.warp_ensemble)]
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]))     # similar lengths pad little
        model.eval()
        hyps, ms, cpu_ms, skipped, frames = [None] * len(feats), [], [], 0, 0
        with torch.inference_mode():
            for start in range(0, len(order), self.eval_batch):
                chosen = order[start:start + self.eval_batch]
                t0, c0 = time.perf_counter(), time.thread_time()
                probs = []
                for member in members:                    # one, or the ensemble's warps
                    x, lens = self.pad([member[i] for i in chosen])
                    if threshold >= 1:
                        lp, out_lens = model.full(x, lens)
                        sk = torch.zeros(len(chosen), dtype=torch.long)
                    else:
                        lp, out_lens, sk = model.skipping(x, lens, threshold, self.spike_extension)
                    probs.append(lp)
                    skipped, frames = skipped + int(sk.sum()), frames + int(out_lens.sum())
                if len(probs) > 1:                        # the mean of the posteriors, as log-probs
                    lp = torch.logsumexp(torch.stack(probs), 0) - math.log(len(probs))
                ms.append(1000 * (time.perf_counter() - t0))
                cpu_ms.append(1000 * (time.thread_time() - c0))   # this thread's CPU time: see the note
                for i, hyp in zip(chosen, greedy(lp, out_lens)):
                    hyps[i] = hyp
        return {"hyps": hyps, "refs": [list(r) for r in refs], "ms": ms, "cpu_ms": cpu_ms,
                "skipped": skipped, "frames": frames, "warps": warps if self.warps else None}

    def evaluate(self, model, split: str) -> dict[str, float]:
        """The metrics of the module docstring; with warp_search also each speaker's chosen warp
        (warp_SPEAKER, the best when an ensemble decodes) and the search's CPU seconds."""
        c0 = time.thread_time()
        warps = self.search_warps(model, split) if self.warps else None
        search_s = time.thread_time() - c0
        r = self.transcribe(model, split, self.skip_threshold, warps)
        wer, cer = error_rates(r["refs"], r["hyps"])
        upper, n = model.n_layers - model.inter_layer, len(r["refs"])
        out = {"wer": wer, "cer": cer,
               "skipped_fraction": r["skipped"] * upper / (r["frames"] * model.n_layers),
               "encoder_ms_per_utt": sum(r["ms"]) / n, "encoder_cpu_ms_per_utt": sum(r["cpu_ms"]) / n,
               "utterances": float(n), "digits": float(sum(map(len, r["refs"])))}
        if warps:
            out.update({f"warp_{s}": w[0] for s, w in warps.items()}, warp_search_cpu_s=search_s)
        return out


def rank_warps(scores: dict[str, dict[float, float]]) -> dict[str, list[float]]:
    """`ASR.warp_scores`' result -> each speaker's factors, highest score first (ties: the one
    nearer 1)."""
    return {s: sorted(sc, key=lambda a: (-sc[a], abs(a - 1.0))) for s, sc in scores.items()}


def warp_grid(spec: str) -> list[float]:
    """warp_search's 'LO:HI:STEP' -> [LO, LO + STEP, ..., HI] (each rounded to 1e-6, so 1.0 is
    exactly 1); '' -> []."""
    if not spec.strip():
        return []
    try:
        lo, hi, step = (float(v) for v in spec.split(":"))
    except ValueError:
        raise ValueError(f"warp_search must be 'LO:HI:STEP' (e.g. 0.86:1.14:0.02) or '', got {spec!r}") from None
    if not (0.5 < lo <= hi < 1.5 and step > 0):
        raise ValueError(f"warp_search {spec!r}: need 0.5 < LO <= HI < 1.5 and STEP > 0")
    count = int(math.floor((hi - lo) / step + 1e-6)) + 1
    if count > 100:
        raise ValueError(f"warp_search {spec!r} has {count} factors: use at most 100 (a larger STEP)")
    return [round(lo + k * step, 6) for k in range(count)]


def error_rates(refs: list[list[int]], hyps: list[list[int]]) -> tuple[float, float]:
    """(WER over digits as words, CER over the spelled-out words), corpus level, via jiwer."""
    words = lambda seq: " ".join(str(d) for d in seq)
    spelled = lambda seq: " ".join(fsdd.DIGIT_WORDS[d] for d in seq)
    wer = jiwer.wer([words(r) for r in refs], [words(h) for h in hyps])
    cer = jiwer.cer([spelled(r) for r in refs], [spelled(h) for h in hyps])
    return float(wer), float(cer)
