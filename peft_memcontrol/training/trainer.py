"""The one training loop of the project: fine-tune a text-to-image UNet with an adapter (or fully) via Accelerate.

`MemControlTrainer` is shared by the launch script (``examples/train_text_to_image_memcontrol.py``), the build
of the tiny pipeline, the demo and the mask search's inner loop. The VAE and the text encoder are frozen; only the
UNet (its adapter parameters, or all of it for ``method="full"``) trains. What is specific to the model family (how
prompts and images are encoded, the pipeline) sits in `peft_memcontrol.training.families`; the run's settings in
`TrainingConfig`, its Accelerate set-up and checkpoints in their own modules.

Every random draw of a step (batch, augmentation, caption randomization, caption dropout, timesteps, noise, latent
sampling) comes from a CPU generator seeded by ``(seed, micro_step, process)``. Runs are therefore reproducible on any
device, and resuming from a checkpoint continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import peft
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, cast_training_params, compute_snr
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from ..metrics.noise_norm import text_conditional_noise_norm
from ..optim import adapter_param_groups
from ..tuners.base import count_model_parameters
from ..tuners.model_card import ModelFacts, method_name, search_provenance, write_model_card
from . import checkpoints
from .accelerator import create_accelerator, mixed_precision_dtype, move_module
from .config import (
    TrainingConfig,
    TrainingResult,
    check_ema_method,
    resolve_training_length,
    update_steps_per_epoch,
)
from .data import StepBatchSampler, collate_image_captions, mix_seed
from .encodings import EncodingCache
from .families import StableDiffusionFamily
from .mitigations import apply_caption_transforms, drop_captions, threshold_keep_mask, with_tokenizer_words
from .monitoring import MemorizationMonitor
from .validation import ValidationImages


class MemControlTrainer:
    """Fine-tune the UNet of a diffusers text-to-image pipeline with one adapter, or fully, through Accelerate.

    The trainer handles Stable Diffusion 1.x/2.x models (`StableDiffusionFamily`, built from ``vae``,
    ``text_encoder`` and ``tokenizer``). Under mixed precision the frozen parts, and under an adapter the frozen base
    UNet, are cast to the fp16/bf16 training dtype; the trained parameters stay in float32 (as diffusers'
    ``cast_training_params`` leaves them), and this package's adapter layers compute in float32.

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
        encodings: the frozen VAE's and text encoder's outputs kept across trainings on the same data
            (`peft_memcontrol.training.EncodingCache`; the search's workers pass one); ``None`` encodes every batch.
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
        encodings: EncodingCache | None = None,
    ) -> None:
        config = config or TrainingConfig()
        check_ema_method(config, method)
        self.method = method
        self.train_dataset = train_dataset
        self.noise_scheduler = noise_scheduler
        if config.prediction_type is not None:
            noise_scheduler.register_to_config(prediction_type=config.prediction_type)
        self.accelerator = accelerator = accelerator if accelerator is not None else create_accelerator(config)
        #: Optimizer steps per pass over the data, as diffusers counts them (`update_steps_per_epoch`).
        self.steps_per_epoch = update_steps_per_epoch(
            len(train_dataset), config.train_batch_size, accelerator.num_processes, config.gradient_accumulation_steps
        )
        self.config = config = resolve_training_length(config, len(train_dataset), accelerator.num_processes)
        if config.allow_tf32:  # as diffusers' scripts do; these switches concern CUDA devices only
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.weight_dtype = mixed_precision_dtype(accelerator)
        self.family = StableDiffusionFamily(
            vae, text_encoder, tokenizer, accelerator.device, self.weight_dtype, encodings=encodings
        )
        #: The base model's Hub id or folder (``None`` for a model built in memory), for fingerprints and cards.
        self.base_model: str | None = getattr(unet.config, "_name_or_path", None) or None

        self.model = self._wrap_unet(unet, method)
        self.run_fingerprint = run_fingerprint(method, train_dataset, config.seed, self.base_model)
        if config.gradient_checkpointing:
            self.base_unet.enable_gradient_checkpointing()
        if config.enable_xformers_memory_efficient_attention:
            self.base_unet.enable_xformers_memory_efficient_attention()
        self.model.to(accelerator.device)
        self.caption_transforms = with_tokenizer_words(config.caption_transforms, tokenizer)
        #: The exponential moving average of the UNet's weights under ``use_ema`` (diffusers' ``EMAModel``).
        self.ema: EMAModel | None = None
        if config.use_ema:
            self.ema = EMAModel(self.model.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config)
            self.ema.to(accelerator.device)
            accelerator.register_for_checkpointing(self.ema)

        if config.use_8bit_adam:
            import bitsandbytes

            optimizer_cls = bitsandbytes.optim.AdamW8bit
        else:
            optimizer_cls = torch.optim.AdamW
        self.optimizer = optimizer_cls(
            self.param_groups(),
            lr=self._learning_rate(),
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=config.max_train_steps * accelerator.num_processes,
        )
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(
            self.model, self.optimizer, self.lr_scheduler
        )
        checkpoints.register_trainable_state_hooks(accelerator, self.unwrapped_model)
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
        """Load the parts of a diffusers Stable Diffusion 1.x/2.x folder or Hub id, as diffusers' scripts do."""
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
        """Return the module to train: the float32 UNet itself (``"full"``) or a ``PeftModel`` around it."""
        if isinstance(method, str):
            if method != "full":
                raise ValueError(f"method must be 'full' or a peft.PeftConfig, got {method!r}.")
            move_module(unet, None, torch.float32)
            unet.requires_grad_(True)
            unet.train()
            return unet
        if not isinstance(method, peft.PeftConfig):
            raise TypeError(f"method must be 'full' or a peft.PeftConfig, got {type(method).__name__}.")
        unet.requires_grad_(False)
        move_module(unet, None, self.weight_dtype)
        model = peft.get_peft_model(unet, method)
        cast_training_params(model, dtype=torch.float32)
        model.train()
        return model

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The trained module without Accelerate's wrappers (the UNet, or the ``PeftModel`` around it)."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def base_unet(self) -> torch.nn.Module:
        """The UNet (with adapter layers injected, if any): what a pipeline runs."""
        model = self.unwrapped_model
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
        if not isinstance(self.method, str):
            groups = adapter_param_groups(self.model, lr)
            if groups:
                return groups
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("Nothing to train: the adapter/mask leaves no trainable parameter in the UNet.")
        return [{"params": params, "lr": lr}]

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> str:
        """Write ``output_dir/checkpoint-<step>`` (trainable tensors, optimizer, scheduler, step, run fingerprint)."""
        config = self.config
        self.check_finite("checkpoint")
        return checkpoints.save_checkpoint(
            self.accelerator,
            config.output_dir,
            self.global_step,
            config.checkpoints_total_limit,
            config.to_tracker_config(),
            self.run_fingerprint,
        )

    def check_finite(self, what: str) -> None:
        """Refuse to save ``what`` when a trainable parameter holds NaN or infinity (the run diverged).

        The loss of a step is computed before its update, so a last step that diverges leaves a finite loss and
        non-finite weights; saving them would hand on a broken model as a trained one.
        """
        not_finite = [name for name, p in self.trainable_parameters().items() if not torch.isfinite(p).all()]
        if not_finite:
            raise FloatingPointError(
                f"Not saving the {what}: after step {self.global_step} the trainable parameters {not_finite[:3]} "
                f"({len(not_finite)} in all) hold NaN or infinite values, the run diverged. Lower --learning_rate, "
                "use --mixed_precision bf16 instead of fp16, or resume from an earlier checkpoint."
            )

    def check_output_dir(self) -> None:
        """Refuse to start a new run in an output folder that holds something (a previous run), unless
        ``overwrite_output_dir``, which deletes the checkpoints found there.

        Called on every process before any of them writes, when no checkpoint was resumed.
        """
        config = self.config
        output_dir = config.output_dir
        if not os.path.isdir(output_dir) or not os.listdir(output_dir):
            return
        if not config.overwrite_output_dir:
            resume = (
                "it holds no checkpoint to resume"
                if config.resume_from_checkpoint
                else "pass --resume_from_checkpoint latest to continue it"
            )
            raise FileExistsError(
                f"Output directory {output_dir} already exists and is not empty: a new run would overwrite the run "
                f"there ({resume}). Pass another --output_dir, or --overwrite_output_dir to replace that run."
            )
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            checkpoints.remove_partial_checkpoints(output_dir)
            for _, path in checkpoints.list_checkpoints(output_dir):
                shutil.rmtree(path)

    def resume(self, checkpoint: str) -> int:
        """Restore a checkpoint (a path, or ``"latest"`` in ``output_dir``) of this run; returns the step it resumes
        at (0 when ``"latest"`` finds none)."""
        step = checkpoints.load_checkpoint(self.accelerator, checkpoint, self.config.output_dir, self.run_fingerprint)
        if step is None:
            return 0
        self.global_step = step
        return step

    # ------------------------------------------------------------------ the step
    def step_generator(self, micro_step: int) -> torch.Generator:
        """The CPU generator of one micro-step on this process: every random draw of the step comes from it."""
        return torch.Generator().manual_seed(mix_seed(self.config.seed, micro_step, self.accelerator.process_index, 7))

    def compute_loss(
        self,
        batch: dict[str, Any],
        micro_step: int,
        *,
        caption_dropout_probability: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss of one micro-batch. Returns ``(loss, per_sample_loss, kept)`` (``kept``: filtering mask).

        ``caption_dropout_probability`` overrides the config's for this call (``0.0`` for a validation loss);
        ``None`` keeps the config's.
        """
        config = self.config
        if caption_dropout_probability is None:
            caption_dropout_probability = config.caption_dropout_probability
        device = self.accelerator.device
        generator = self.step_generator(micro_step)

        captions = apply_caption_transforms(
            batch["captions"], batch["indices"].tolist(), self.caption_transforms, generator
        )
        captions = drop_captions(captions, caption_dropout_probability, generator)

        # The VAE may return channels-last latents on CPU (oneDNN); a plain layout keeps every adapter's backward on
        # the well-trodden path (a channels-last UNet input crashed masked attention's backward).
        latents = self.family.encode_images(batch["pixel_values"], generator).float().contiguous()
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

        encoder_hidden_states = self.family.encode_prompts(captions)
        unet_inputs = self.family.extra_unet_inputs(captions, latents)
        kept = torch.ones(bsz, dtype=torch.bool, device=device)
        if config.noise_norm_threshold is not None:
            # Wen et al.'s filtering signal, || eps(x_t, c) - eps(x_t, "") ||, from the metrics package (no_grad).
            with self.accelerator.autocast():
                norms = text_conditional_noise_norm(
                    self.model, noisy_latents, timesteps, encoder_hidden_states, self._uncond()
                )
            kept = threshold_keep_mask(norms, config.noise_norm_threshold)
        with self.accelerator.autocast():
            model_pred = self.model(noisy_latents, timesteps, encoder_hidden_states, return_dict=False, **unet_inputs)[
                0
            ]

        per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
        if config.snr_gamma is not None:
            snr = compute_snr(self.noise_scheduler, timesteps)
            weights = torch.stack([snr, config.snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
            per_sample = per_sample * (weights / snr if prediction_type == "epsilon" else weights / (snr + 1))

        loss = torch.where(kept, per_sample, torch.zeros_like(per_sample)).sum() / kept.sum().clamp(min=1)
        return loss, per_sample.detach(), kept

    def _uncond(self) -> torch.Tensor:
        """Embeddings of the empty prompt (1 x L x D), computed once."""
        if self._uncond_embeddings is None:
            self._uncond_embeddings = self.family.encode_prompts([""])
        return self._uncond_embeddings

    @contextlib.contextmanager
    def inference_mode(self) -> Iterator[None]:
        """The model as a pipeline should run it, for images made during training: eval mode, no gradients and,
        under ``use_ema``, the averaged weights. Afterwards the trained weights, the train mode and the random number
        generators (the CPU's and the training device's) are as they were, so that the run continues as if nothing
        had been generated."""
        model = self.unwrapped_model
        was_training = model.training
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        if self.ema is not None:
            self.ema.store(model.parameters())
            self.ema.copy_to(model.parameters())
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                yield
        finally:
            model.train(was_training)
            if self.ema is not None:
                self.ema.restore(model.parameters())

    # ------------------------------------------------------------------ the loop
    def train(
        self, monitor: MemorizationMonitor | None = None, validation: ValidationImages | None = None
    ) -> TrainingResult:
        """Run (or resume) training to ``max_train_steps`` optimizer steps; returns a `TrainingResult`.

        ``monitor`` checks for copies of training images before the first step and every ``monitor.every_n_steps``
        steps (`peft_memcontrol.training.monitoring`); with ``stop_on_copy`` the run ends at the first copy found.
        ``validation`` makes validation images every ``validation_epochs`` epochs
        (`peft_memcontrol.training.validation`). Under ``use_ema`` the model holds the averaged weights afterwards,
        the weights diffusers' ``train_text_to_image.py`` saves.
        """
        config, accelerator = self.config, self.accelerator
        if config.resume_from_checkpoint:
            self.resume(config.resume_from_checkpoint)
        if self.global_step == 0:
            self.check_output_dir()
        accelerator.wait_for_everyone()  # every process has looked at output_dir before any writes to it
        os.makedirs(config.output_dir, exist_ok=True)
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
        hooks = [hook for hook in (monitor, validation) if hook is not None]
        stopped_at_copy = self.global_step == 0 and self._run_due_hooks(hooks, progress)
        for batch in () if stopped_at_copy else loader:
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
                if self.ema is not None:
                    self.ema.step(self.model.parameters())
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
                if self._run_due_hooks(hooks, progress):
                    stopped_at_copy = True
                    break
                if self.global_step >= config.max_train_steps:
                    break
        progress.close()
        if self.ema is not None:
            self.ema.copy_to(self.model.parameters())
        accelerator.wait_for_everyone()
        return TrainingResult(
            global_step=self.global_step,
            losses=losses,
            dropped_samples=dropped,
            seen_samples=seen,
            output_dir=config.output_dir,
            memorization_checks=[check.to_dict() for check in monitor.history] if monitor is not None else [],
            stopped_at_copy=stopped_at_copy,
        )

    def _run_due_hooks(self, hooks: Sequence[Any], progress: Any) -> bool:
        """Run the periodic hooks of `train` that are due at the current step; returns whether one stops training.

        A hook has a ``label``, ``due(step)``, ``check(trainer)`` and ``should_stop(result)``; a result has
        ``verdict()`` (`MemorizationMonitor`, `ValidationImages`).
        """
        stop = False
        for hook in hooks:
            if hook.due(self.global_step):
                result = hook.check(self)
                if result is not None:
                    progress.write(f"{hook.label}, {result.verdict()}.")
                stop = hook.should_stop(result) or stop
        return stop

    # ------------------------------------------------------------------ outputs
    def save_adapter(
        self,
        output_dir: str | None = None,
        *,
        card_notes: Mapping[str, Any] | None = None,
        search: Mapping[str, Any] | None = None,
    ) -> str:
        """Save the result with its model card: the adapter with ``save_pretrained`` in ``output_dir`` (or, for
        ``"full"``, the whole UNet in ``output_dir/unet``); returns the folder written.

        ``card_notes`` and ``search`` go to the card, see `write_model_card`.
        """
        output_dir = output_dir or self.config.output_dir
        self.check_finite("adapter" if not isinstance(self.method, str) else "model")
        self.accelerator.wait_for_everyone()
        model = self.unwrapped_model
        target = output_dir if hasattr(model, "peft_config") else os.path.join(output_dir, "unet")
        if self.accelerator.is_main_process:
            model.save_pretrained(target)
            self.write_model_card(target, card_notes=card_notes, search=search)
        self.accelerator.wait_for_everyone()
        return target

    def write_model_card(
        self,
        folder: str,
        output: str | None = None,
        *,
        card_notes: Mapping[str, Any] | None = None,
        search: Mapping[str, Any] | None = None,
    ) -> str:
        """Write the model card of an output of this run, ``folder/README.md`` (`peft_memcontrol.tuners.model_card`):
        the base model, method, mask and trainable share, the data and the settings of the run; returns its path.

        Args:
            folder: the output's folder.
            output: ``"adapter"``, ``"unet"`` or ``"pipeline"`` (a saved pipeline running the trained UNet); by
                default what `save_adapter` saves for the method.
            card_notes: facts the trainer does not know, added to the data and training sections: ``dataset`` (its
                Hub id or local path), ``duplicate_groups`` (found in the data), ``mask_file`` and
                ``learning_rate_source`` (where the mask and the learning rate came from), ``final_loss``.
            search: the search provenance of the mask (`peft_memcontrol.tuners.model_card.search_provenance`); by
                default what the adapter's config records (a `MemControlConfig` from a search).
        """
        summary = self.run_summary()
        output = output or ("unet" if isinstance(self.method, str) else "adapter")
        facts = ModelFacts.from_method(
            self.method, output, self.base_model, summary["trainable_parameters"], summary["trainable_share"]
        )
        config = self.config
        training = {
            **summary,
            "global_step": self.global_step,
            "lr_scheduler": config.lr_scheduler,
            "lr_warmup_steps": config.lr_warmup_steps,
            "seed": config.seed,
            "mixed_precision": self.accelerator.mixed_precision,
            "resolution": getattr(self.train_dataset, "resolution", None),
            **(card_notes or {}),
        }
        if search is None and not isinstance(self.method, str):
            search = search_provenance(self.method.to_dict())
        return write_model_card(folder, facts, training=training, search=search)

    def pipeline(self, pipeline_cls: type | None = None, scheduler: Any = None) -> Any:
        """A text-to-image pipeline running the trained UNet (adapter applied, not merged).

        ``scheduler`` defaults to a DDIM scheduler with the training noise schedule.
        """
        if scheduler is None:
            scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        return self.family.pipeline(self.base_unet, scheduler, pipeline_cls)

    def end(self) -> None:
        """Close the trackers."""
        self.accelerator.end_training()

    def run_summary(self) -> dict[str, Any]:
        """What the run trains on and with, as diffusers' scripts state it before training (`training_banner`):
        examples, epochs, batch sizes, steps, method, mask units on, learning rate, trainable parameters and their
        share of the UNet's (adapter parameters excluded).

        Epochs are the passes over the data that the run's steps start, diffusers' ``num_train_epochs`` once its
        script has settled the run's length (`resolve_training_length`).
        """
        config = self.config
        total_batch = config.train_batch_size * self.accelerator.num_processes * config.gradient_accumulation_steps
        trainable = sum(parameter.numel() for parameter in self.trainable_parameters().values())
        base = count_model_parameters(self.base_unet)
        mask = getattr(self.method, "mask", None)
        return {
            "num_examples": len(self.train_dataset),
            "num_epochs": config.num_train_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "train_batch_size": config.train_batch_size,
            "num_processes": self.accelerator.num_processes,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "total_train_batch_size": total_batch,
            "max_train_steps": config.max_train_steps,
            "method": method_name(self.method),
            "mask_units_on": None if mask is None else sum(bool(on) for on in mask.values()),
            "mask_units": None if mask is None else len(mask),
            "learning_rate": self._learning_rate(),
            "trainable_parameters": trainable,
            "unet_parameters": base,
            "trainable_share": trainable / base,
        }


def training_banner(summary: dict[str, Any]) -> list[str]:
    """The lines diffusers' ``train_text_to_image_lora.py`` logs before training, then the method, the mask, the
    learning rate and the trainable parameters, from a `MemControlTrainer.run_summary` (plus, when the launch
    script adds them, ``mask_file`` and ``learning_rate_source``)."""
    if summary["mask_units"] is None:
        mask = "none (every unit of the method trains)"
    else:
        mask = f"{summary['mask_units_on']} of {summary['mask_units']} units on"
    if summary.get("mask_file"):
        mask += f", from {summary['mask_file']}"
    rate = f"{summary['learning_rate']:g}"
    if summary.get("learning_rate_source"):
        rate += f" ({summary['learning_rate_source']})"
    return [
        "***** Running training *****",
        f"  Num examples = {summary['num_examples']}",
        f"  Num Epochs = {summary['num_epochs']}",
        f"  Instantaneous batch size per device = {summary['train_batch_size']}",
        f"  Total train batch size (w. parallel, distributed & accumulation) = {summary['total_train_batch_size']}",
        f"  Gradient Accumulation steps = {summary['gradient_accumulation_steps']}",
        f"  Total optimization steps = {summary['max_train_steps']}",
        f"  Method = {summary['method']}",
        f"  Mask = {mask}",
        f"  Learning rate = {rate}",
        f"  Trainable parameters = {summary['trainable_parameters']:,} ({summary['trainable_share']:.4%} of the "
        f"UNet's {summary['unet_parameters']:,})",
    ]


def run_fingerprint(method: Any, dataset: Any, seed: int, base_model: str | None) -> dict[str, Any]:
    """What identifies a run, recorded in its checkpoints so that no other run resumes them.

    ``method``: ``"full"`` or the PEFT type; ``adapter_config``: a hash of the PEFT config (its mask included);
    ``data``: a hash of the data set's size, captions, image file names and resolution (as far as it exposes them:
    a moved data folder is the same data);
    ``seed``; ``base_model``: the UNet's ``_name_or_path`` (``None`` for a model built in memory).
    """
    if isinstance(method, str):
        name, adapter = method, None
    else:
        name, adapter = str(method.peft_type), _digest(method.to_dict())
    images = [
        os.path.basename(image) for image in getattr(dataset, "images", []) if isinstance(image, (str, os.PathLike))
    ]
    data = {
        "size": len(dataset),
        "captions": getattr(dataset, "captions", None),
        "images": images,
        "resolution": getattr(dataset, "resolution", None),
    }
    return {"method": name, "adapter_config": adapter, "data": _digest(data), "seed": seed, "base_model": base_model}


def _digest(value: Any) -> str:
    """A short, stable hash of a JSON-like value (sets sorted, other objects by their ``str``)."""
    text = json.dumps(
        value, sort_keys=True, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
