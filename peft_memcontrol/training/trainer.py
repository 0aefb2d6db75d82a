"""The one training loop of the project: fine-tune a text-to-image UNet with an adapter (or fully) via Accelerate.

`MemControlTrainer` is shared by the launch script (``examples/train_text_to_image_memcontrol.py``), the build
of the tiny pipeline, the demo and the mask search's inner loop. The VAE and the text encoder are frozen; only the
UNet (its adapter parameters, or all of it for ``method="full"``) trains.

Every random draw of a step (batch, augmentation, caption randomization, caption dropout, timesteps, noise, latent
sampling) comes from a CPU generator seeded by ``(seed, micro_step, process)``. Runs are therefore reproducible on any
device, and resuming from a checkpoint continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data import ImageCaptionDataset, StepBatchSampler, collate_image_captions, mix_seed
from .mitigations import (
    apply_caption_transforms,
    drop_captions,
    threshold_keep_mask,
    tokenizer_words,
)


logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS_NAME = "trainable_parameters.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"


@dataclass
class TrainingConfig:
    """Hyper-parameters of a run; names follow diffusers' ``train_text_to_image_lora.py`` flags."""

    output_dir: str = "memcontrol-model"
    max_train_steps: int = 100
    train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    caption_dropout_probability: float = 0.1
    snr_gamma: float | None = None
    prediction_type: str | None = None
    noise_offset: float = 0.0
    seed: int = 0
    checkpointing_steps: int | None = None
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    report_to: str | None = "tensorboard"
    logging_dir: str = "logs"
    tracker_project_name: str = "memcontrol"
    dataloader_num_workers: int = 0
    caption_transforms: Sequence[Any] = field(default_factory=list)
    noise_norm_threshold: float | str | None = None
    ddp_find_unused_parameters: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.max_train_steps < 1:
            raise ValueError(f"max_train_steps must be at least 1, got {self.max_train_steps}.")
        if not 0.0 <= self.caption_dropout_probability <= 1.0:
            raise ValueError(f"caption_dropout_probability must be in [0, 1], got {self.caption_dropout_probability}.")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}.")
        if isinstance(self.noise_norm_threshold, str) and self.noise_norm_threshold != "auto":
            raise ValueError(f"noise_norm_threshold must be a number or 'auto', got {self.noise_norm_threshold!r}.")

    def to_tracker_config(self) -> dict[str, Any]:
        """Flat scalars for the trackers' hyper-parameter tables."""
        config = asdict(self)
        config["caption_transforms"] = ",".join(type(t).__name__ for t in self.caption_transforms)
        return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.items()}


@dataclass
class TrainingResult:
    """What a run did: the step reached, the per-step losses (mean over processes), and filtering counts."""

    global_step: int
    losses: list[float]
    dropped_samples: int = 0
    seen_samples: int = 0
    output_dir: str | None = None


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401

        return True
    except ImportError:
        try:
            import tensorboardX  # noqa: F401

            return True
        except ImportError:
            return False


class MemControlTrainer:
    """Fine-tune the UNet of a diffusers text-to-image pipeline with one adapter, or fully, through Accelerate.

    Args:
        unet: the pipeline's ``UNet2DConditionModel``, the model that is fine-tuned.
        vae: its VAE (frozen).
        text_encoder: its text encoder (frozen).
        tokenizer: its tokenizer.
        noise_scheduler: the training noise scheduler (``DDPMScheduler``); `from_pretrained` loads all five.
        train_dataset: an `ImageCaptionDataset` (or any data set of
            ``{"pixel_values", "caption", "index"}`` items that accepts ``(index, aug_seed)`` keys).
        method: ``"full"`` (full fine-tuning, the baseline) or any ``peft.PeftConfig`` (SVDiff, DiffFit, masked
            attention, MemControl, LoRA, ...), applied with ``peft.get_peft_model``.
        config: a `TrainingConfig`.
        accelerator: an existing ``accelerate.Accelerator`` to reuse (the search's inner loop runs many trainings in
            one process); by default one is created from ``config``.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        noise_scheduler: Any,
        train_dataset: Any,
        method: Any = "full",
        config: TrainingConfig | None = None,
        accelerator: Any = None,
    ) -> None:
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        self.config = config = config or TrainingConfig()
        self.method = method
        self.train_dataset = train_dataset
        self.tokenizer = tokenizer
        if tokenizer.model_max_length is None or tokenizer.model_max_length > 100_000:
            # A tokenizer folder without tokenizer_config.json does not know CLIP's 77: take the text encoder's.
            tokenizer.model_max_length = text_encoder.config.max_position_embeddings
        self.noise_scheduler = noise_scheduler
        if config.prediction_type is not None:
            noise_scheduler.register_to_config(prediction_type=config.prediction_type)

        if accelerator is None:
            log_with = config.report_to
            if log_with == "tensorboard" and not _tensorboard_available():
                logger.warning("report_to='tensorboard' but tensorboard is not installed: logging to no tracker.")
                log_with = None
            if log_with in ("none", ""):
                log_with = None
            accelerator = _new_accelerator(
                cpu=_multi_process_without_accelerator(),
                gradient_accumulation_steps=config.gradient_accumulation_steps,
                mixed_precision=config.mixed_precision,
                log_with=log_with,
                project_config=ProjectConfiguration(
                    project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
                ),
                kwargs_handlers=[
                    DistributedDataParallelKwargs(find_unused_parameters=config.ddp_find_unused_parameters)
                ],
            )
        self.accelerator = accelerator
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            accelerator.mixed_precision, torch.float32
        )

        # Frozen parts: no gradients, cast to the mixed-precision dtype like diffusers' scripts do.
        for module in (vae, text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.vae = _to(vae, accelerator.device, self.weight_dtype)
        self.text_encoder = _to(text_encoder, accelerator.device, self.weight_dtype)

        self.model = self._wrap_unet(unet, method)
        if config.gradient_checkpointing:
            self.base_unet.enable_gradient_checkpointing()
        self.model.to(accelerator.device)

        self.caption_transforms = list(config.caption_transforms)
        words = None
        for transform in self.caption_transforms:
            if getattr(transform, "vocabulary", False) is None:  # a word pool left to the tokenizer
                words = words or tokenizer_words(tokenizer)
                transform.vocabulary = words

        self.optimizer = torch.optim.AdamW(
            self.param_groups(),
            lr=self._learning_rate(),
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=config.max_train_steps * accelerator.num_processes,
        )
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(
            self.model, self.optimizer, self.lr_scheduler
        )
        self._register_checkpoint_hooks()
        self.global_step = 0
        self._uncond_embeddings: torch.Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str,
        train_dataset: Any,
        method: Any = "full",
        config: TrainingConfig | None = None,
        revision: str | None = None,
        variant: str | None = None,
        **kwargs: Any,
    ) -> MemControlTrainer:
        """Load the parts of a diffusers text-to-image model folder or Hub id, as diffusers' scripts do."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        path = pretrained_model_name_or_path
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model_index.json")):
            raise FileNotFoundError(f"{path} has no model_index.json: it is not a diffusers pipeline folder.")
        load = {"revision": revision}
        return cls(
            unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=variant, **load),
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", variant=variant, **load),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", variant=variant, **load),
            tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **load),
            noise_scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler", **load),
            train_dataset=train_dataset,
            method=method,
            config=config,
            **kwargs,
        )

    def _wrap_unet(self, unet: torch.nn.Module, method: Any) -> torch.nn.Module:
        """Return the module to train: the UNet itself (``"full"``) or a ``PeftModel`` around it."""
        _to(unet, None, torch.float32)
        if isinstance(method, str):
            if method != "full":
                raise ValueError(f"method must be 'full' or a peft.PeftConfig, got {method!r}.")
            unet.requires_grad_(True)
            unet.train()
            return unet
        import peft

        if not isinstance(method, peft.PeftConfig):
            raise TypeError(f"method must be 'full' or a peft.PeftConfig, got {type(method).__name__}.")
        unet.requires_grad_(False)
        model = peft.get_peft_model(unet, method)
        model.train()
        return model

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The trained module without Accelerate's wrappers (the UNet, or the ``PeftModel`` around it)."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def base_unet(self) -> torch.nn.Module:
        """The UNet (with adapter layers injected, if any): what a pipeline runs."""
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Named parameters that receive gradients."""
        return {n: p for n, p in self.unwrapped_model.named_parameters() if p.requires_grad}

    def _learning_rate(self) -> float:
        config = self.config
        if config.scale_lr:
            return (
                config.learning_rate
                * config.gradient_accumulation_steps
                * config.train_batch_size
                * self.accelerator.num_processes
            )
        return config.learning_rate

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups: the adapter's own (e.g. SVDiff norm shifts at their own rate) or one group."""
        lr = self._learning_rate()
        model = self.model
        if not isinstance(self.method, str):
            try:
                from peft_memcontrol import adapter_param_groups
            except ImportError:
                adapter_param_groups = None
            if adapter_param_groups is not None:
                groups = [g for g in adapter_param_groups(model, lr) if len(list(g["params"])) > 0]
                if groups:
                    return groups
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("Nothing to train: the adapter/mask leaves no trainable parameter in the UNet.")
        return [{"params": params, "lr": lr}]

    # ------------------------------------------------------------------ checkpoints
    def _register_checkpoint_hooks(self) -> None:
        """Save only the trainable tensors in checkpoints (not the frozen base model), like diffusers' LoRA script."""
        from safetensors.torch import load_file, save_file

        def save_hook(models: list, weights: list, output_dir: str) -> None:
            if self.accelerator.is_main_process:
                state = {n: p.detach().cpu().contiguous() for n, p in self.trainable_parameters().items()}
                save_file(state, os.path.join(output_dir, TRAINABLE_WEIGHTS_NAME))
            while weights:
                weights.pop()

        def load_hook(models: list, input_dir: str) -> None:
            while models:
                models.pop()
            path = os.path.join(input_dir, TRAINABLE_WEIGHTS_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing: {input_dir} is not a checkpoint of this trainer.")
            state = load_file(path)
            params = dict(self.unwrapped_model.named_parameters())
            unknown = sorted(set(state) - set(params))
            if unknown:
                raise ValueError(
                    f"Checkpoint {input_dir} holds parameters this model lacks ({unknown[:3]} ...): "
                    "resume with the same method and mask that wrote it."
                )
            with torch.no_grad():
                for name, tensor in state.items():
                    params[name].copy_(tensor)

        self.accelerator.register_save_state_pre_hook(save_hook)
        self.accelerator.register_load_state_pre_hook(load_hook)

    def save_checkpoint(self) -> str:
        """Write ``output_dir/checkpoint-<step>`` (trainable tensors, optimizer, scheduler, step)."""
        config = self.config
        path = os.path.join(config.output_dir, f"checkpoint-{self.global_step}")
        if self.accelerator.is_main_process and config.checkpoints_total_limit is not None:
            existing = sorted(_list_checkpoints(config.output_dir), key=lambda p: p[0])
            while len(existing) >= config.checkpoints_total_limit:
                shutil.rmtree(existing.pop(0)[1])
        self.accelerator.save_state(path)
        if self.accelerator.is_main_process:
            with open(os.path.join(path, TRAINER_STATE_NAME), "w") as f:
                json.dump({"global_step": self.global_step, "config": self.config.to_tracker_config()}, f, indent=2)
        self.accelerator.wait_for_everyone()
        return path

    def resume(self, checkpoint: str) -> int:
        """Restore a checkpoint (a path, or ``"latest"`` in ``output_dir``); returns the step it resumes at."""
        if checkpoint == "latest":
            found = _list_checkpoints(self.config.output_dir)
            if not found:
                logger.warning("No checkpoint in %s: starting a new run.", self.config.output_dir)
                return 0
            checkpoint = max(found)[1]
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(
                f"Checkpoint directory {checkpoint} does not exist. Pass a checkpoint-<step> folder written by "
                "this trainer, or 'latest' to take the newest one in --output_dir."
            )
        state_path = os.path.join(checkpoint, TRAINER_STATE_NAME)
        if not os.path.isfile(state_path):
            raise FileNotFoundError(f"{state_path} is missing: {checkpoint} is not a checkpoint of this trainer.")
        self.accelerator.load_state(checkpoint)
        with open(state_path) as f:
            self.global_step = int(json.load(f)["global_step"])
        return self.global_step

    # ------------------------------------------------------------------ the step
    def encode_prompts(self, captions: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states for captions (padded to the tokenizer's max length, as SD does)."""
        ids = self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=self._max_length(),
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.accelerator.device)
        with torch.no_grad():
            return self.text_encoder(ids, return_dict=False)[0]

    def _max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def step_generator(self, micro_step: int) -> torch.Generator:
        """The CPU generator of one micro-step on this process: every random draw of the step comes from it."""
        return torch.Generator().manual_seed(mix_seed(self.config.seed, micro_step, self.accelerator.process_index, 7))

    def compute_loss(self, batch: dict[str, Any], micro_step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss of one micro-batch. Returns ``(loss, per_sample_loss, kept)`` (``kept``: filtering mask)."""
        config = self.config
        device = self.accelerator.device
        generator = self.step_generator(micro_step)

        captions = apply_caption_transforms(
            batch["captions"], batch["indices"].tolist(), self.caption_transforms, generator
        )
        captions = drop_captions(captions, config.caption_dropout_probability, generator)

        pixel_values = batch["pixel_values"].to(device, dtype=self.weight_dtype)
        with torch.no_grad():
            latent_dist = self.vae.encode(pixel_values).latent_dist
            eps = torch.randn(latent_dist.mean.shape, generator=generator).to(device, latent_dist.mean.dtype)
            latents = latent_dist.mean + latent_dist.std * eps
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            # The VAE may return channels-last latents on CPU (oneDNN); a plain layout keeps every adapter's
            # backward on the well-trodden path (a channels-last UNet input crashed masked attention's backward).
            latents = ((latents - shift) * self.vae.config.scaling_factor).float().contiguous()

        bsz = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator)
        if config.noise_offset:
            noise += config.noise_offset * torch.randn((bsz, latents.shape[1], 1, 1), generator=generator)
        noise = noise.to(device)
        num_train_timesteps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train_timesteps, (bsz,), generator=generator).to(device)
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)

        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"Unknown prediction type {prediction_type!r} in the noise scheduler's config.")

        encoder_hidden_states = self.encode_prompts(captions)
        kept = torch.ones(bsz, dtype=torch.bool, device=device)
        if config.noise_norm_threshold is not None:
            # Wen et al.'s filtering signal, || eps(x_t, c) - eps(x_t, "") ||, from the metrics package (no_grad).
            from peft_memcontrol.metrics import text_conditional_noise_norm

            with self.accelerator.autocast():
                norms = text_conditional_noise_norm(
                    self.model, noisy_latents, timesteps, encoder_hidden_states, self._uncond()
                )
            kept = threshold_keep_mask(norms, config.noise_norm_threshold)
        with self.accelerator.autocast():
            model_pred = self.model(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]

        per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
        if config.snr_gamma is not None:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(self.noise_scheduler, timesteps)
            weights = torch.stack([snr, config.snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
            per_sample = per_sample * (weights / snr if prediction_type == "epsilon" else weights / (snr + 1))

        loss = torch.where(kept, per_sample, torch.zeros_like(per_sample)).sum() / kept.sum().clamp(min=1)
        return loss, per_sample.detach(), kept

    def _uncond(self) -> torch.Tensor:
        """Embeddings of the empty prompt (1 x L x D), computed once."""
        if self._uncond_embeddings is None:
            self._uncond_embeddings = self.encode_prompts([""])
        return self._uncond_embeddings

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainingResult:
        """Run (or resume) training to ``max_train_steps`` optimizer steps; returns a `TrainingResult`."""
        from tqdm.auto import tqdm

        config, accelerator = self.config, self.accelerator
        os.makedirs(config.output_dir, exist_ok=True)
        if config.resume_from_checkpoint:
            self.resume(config.resume_from_checkpoint)
        if accelerator.trackers == [] and accelerator.log_with:
            accelerator.init_trackers(config.tracker_project_name, config=config.to_tracker_config())

        accumulation = config.gradient_accumulation_steps
        sampler = StepBatchSampler(
            num_samples=len(self.train_dataset),
            batch_size=config.train_batch_size,
            num_steps=config.max_train_steps * accumulation,
            seed=config.seed,
            start_step=self.global_step * accumulation,
            num_processes=accelerator.num_processes,
            process_index=accelerator.process_index,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=collate_image_captions,
            num_workers=config.dataloader_num_workers,
        )
        progress = tqdm(
            range(config.max_train_steps),
            initial=self.global_step,
            desc="Steps",
            disable=not (config.show_progress and accelerator.is_local_main_process),
        )
        losses: list[float] = []
        dropped = seen = 0
        running = 0.0
        self.model.train()
        micro_step = self.global_step * accumulation
        for batch in loader:
            with accelerator.accumulate(self.model):
                loss, _, kept = self.compute_loss(batch, micro_step)
                # Gathered first, so that every process sees a bad loss and stops together.
                step_losses = accelerator.gather(loss.detach().view(1))
                if not torch.isfinite(step_losses).all():
                    raise FloatingPointError(
                        f"Loss is {step_losses.tolist()} at step {self.global_step} (micro-step {micro_step}). "
                        "Lower --learning_rate, use --mixed_precision bf16 instead of fp16, or check the data for "
                        "corrupt images."
                    )
                counts = accelerator.gather(
                    torch.stack([(~kept).sum(), torch.tensor(kept.numel(), device=kept.device)]).view(1, 2)
                )
                dropped += int(counts[:, 0].sum())
                seen += int(counts[:, 1].sum())
                running += step_losses.mean().item() / accumulation
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(
                        [p for g in self.optimizer.param_groups for p in g["params"]], config.max_grad_norm
                    )
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            micro_step += 1
            if accelerator.sync_gradients:
                self.global_step += 1
                losses.append(running)
                progress.update(1)
                logs = {"train_loss": running, "lr": self.lr_scheduler.get_last_lr()[0]}
                if config.noise_norm_threshold is not None:
                    logs["dropped_samples"] = dropped
                progress.set_postfix(loss=f"{running:.4f}")
                accelerator.log(logs, step=self.global_step)
                running = 0.0
                if config.checkpointing_steps and self.global_step % config.checkpointing_steps == 0:
                    self.save_checkpoint()
                if self.global_step >= config.max_train_steps:
                    break
        progress.close()
        accelerator.wait_for_everyone()
        return TrainingResult(
            global_step=self.global_step,
            losses=losses,
            dropped_samples=dropped,
            seen_samples=seen,
            output_dir=config.output_dir,
        )

    # ------------------------------------------------------------------ outputs
    def save_adapter(self, output_dir: str | None = None) -> str:
        """Save the result: the adapter with ``save_pretrained`` (or, for ``"full"``, the whole UNet)."""
        output_dir = output_dir or self.config.output_dir
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            model = self.unwrapped_model
            target = output_dir if hasattr(model, "peft_config") else os.path.join(output_dir, "unet")
            model.save_pretrained(target)
        self.accelerator.wait_for_everyone()
        return output_dir

    def pipeline(self, pipeline_cls: Any = None, scheduler: Any = None) -> Any:
        """A text-to-image pipeline running the trained UNet (adapter applied, not merged)."""
        if pipeline_cls is None:
            from diffusers import StableDiffusionPipeline as pipeline_cls
        if scheduler is None:
            from diffusers import DDIMScheduler

            scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        pipe = pipeline_cls(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.base_unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def end(self) -> None:
        """Close the trackers."""
        self.accelerator.end_training()


def _new_accelerator(**kwargs: Any) -> Any:
    """Create an ``Accelerator``; in a single process, start from a fresh global state.

    Accelerate keeps one process-wide state: a second ``Accelerator`` with another ``mixed_precision`` raises, and
    one with ``mixed_precision=None`` silently inherits the previous run's. Sequential trainings in one process
    (tests, notebooks, the search's inner loop) each get their own settings; distributed runs keep the launcher's.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(**kwargs)


def _multi_process_without_accelerator() -> bool:
    """True when launched as several processes (``accelerate launch --multi_gpu``) on a machine with no GPU.

    Accelerate then needs ``cpu=True`` to set up a gloo process group (``DistributedType.MULTI_CPU``); with it the
    same launch command trains with DDP on CPUs as it does on GPUs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    accelerator_api = getattr(torch, "accelerator", None)
    if accelerator_api is not None and hasattr(accelerator_api, "is_available"):
        return not accelerator_api.is_available()
    return not torch.cuda.is_available()


def _to(module: torch.nn.Module, device: Any, dtype: torch.dtype) -> torch.nn.Module:
    """Move a module, casting only when its dtype differs (diffusers warns on every dtype cast)."""
    if device is not None:
        module.to(device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    return module


def _list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        if name.startswith("checkpoint-") and name[len("checkpoint-") :].isdigit():
            found.append((int(name[len("checkpoint-") :]), os.path.join(output_dir, name)))
    return found


def train_text_to_image(
    pretrained_model_name_or_path: str,
    train_dataset: ImageCaptionDataset,
    method: Any = "full",
    config: TrainingConfig | None = None,
) -> tuple[MemControlTrainer, TrainingResult]:
    """Load a model, fine-tune it, save the adapter: the one-call form of `MemControlTrainer`."""
    trainer = MemControlTrainer.from_pretrained(pretrained_model_name_or_path, train_dataset, method, config)
    result = trainer.train()
    trainer.save_adapter()
    trainer.end()
    return trainer, result


__all__ = ["MemControlTrainer", "TrainingConfig", "TrainingResult", "train_text_to_image"]
