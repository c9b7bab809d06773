"""fit(): train a model of the zoo on a data set, with per-epoch checkpoints and metrics.

One process, or one of several under torchrun (DistributedDataParallel): every process
runs the same code; only rank 0 prints, writes files and saves checkpoints.
"""

import contextlib
import dataclasses
import os
import signal
import threading
import time

import torch
import torch.nn.functional as F

from cnnkit.data import load_dataset

from . import checkpoint as ckpt
from . import distributed
from .config import ConfigError, TrainConfig, parse_device
from .metrics import ClassificationMeter
from .pipeline import InputPipeline, data_statistics, make_loader
from .progress import Progress, format_duration
from .records import RunRecords
from .schedules import DivideOnPlateau, build_scheduler

CHECKPOINT_FORMAT = 1


@dataclasses.dataclass
class FitResult:
    config: TrainConfig
    history: list  # one dict per epoch, as in metrics.jsonl
    test: dict  # the last evaluation: loss, top1_acc, top1_err, top5_acc, top5_err, count
    checkpoint: str  # the newest checkpoint written (None when none was)
    interrupted: bool  # stopped early by Ctrl-C (or request_stop); resume with resume=True


def fit(model="lenet5", *, on_batch_end=None, **settings):
    """Train `model` (a name from cnnkit.models.list_models()) and return a FitResult.

    settings are TrainConfig fields (dataset, epochs, batch_size, optimizer, lr, schedule,
    fused, channels_last, compile, amp, seed, device, output, resume, ...); those left out
    come from the model's recipe (cnnkit.train.recipes), or from the checkpoint when
    resuming. on_batch_end(trainer, epoch, step) is called after every training step.
    """
    return Trainer(dict(settings, model=model), on_batch_end).run()


def _make_output_directory(output):
    """Create the run directory before the data set loads: an --output that cannot be one
    (an existing file, a read-only place) then fails at once, in one line."""
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--output {output}: cannot create the run directory there "
                          f"({error.strerror or error})") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {output}: the run directory is not writable")


def _unknown_settings(settings):
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    return sorted(set(settings) - known)


class Trainer:
    def __init__(self, settings, on_batch_end=None):
        unknown = _unknown_settings(settings)
        if unknown:
            raise TypeError(f"fit() got an unexpected setting {unknown[0]!r}")
        self.settings = settings
        self.on_batch_end = on_batch_end
        self.stop_requested = False

    def request_stop(self):
        """Finish the current step, save a checkpoint and return (what Ctrl-C does)."""
        self.stop_requested = True

    # ---- setup -------------------------------------------------------------------------

    def _resume_state(self, output):
        resume = self.settings.get("resume")
        if not resume:
            return None, None
        source = output if resume is True else os.fspath(resume)
        if os.path.isdir(source):
            try:
                path, state = ckpt.load_latest_checkpoint(source, on_skip=self._warn_skipped)
            except ckpt.CheckpointError as error:
                raise ckpt.CheckpointError(f"{error}; nothing to resume: start without "
                                           "--resume, or pass --output of the run to continue")
        elif not os.path.exists(source):
            raise ckpt.CheckpointError(f"{source}: nothing to resume: no such checkpoint or "
                                       "run directory; start without --resume")
        else:
            path, state = source, ckpt.load_checkpoint(source)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ckpt.CheckpointError(f"{path}: not a cnnkit training checkpoint")
        return path, state

    def _warn_skipped(self, error):
        self.say(f"warning: {error}; using the previous checkpoint")

    def _configure(self):
        from cnnkit.models import list_models

        model = self.settings.get("model")
        if model not in list_models():
            raise ConfigError(f"unknown model {model!r}; choose one of: {', '.join(list_models())}")
        output = self.settings.get("output") or f"runs/{model}"
        path, state = self._resume_state(output)
        explicit = {k: v for k, v in self.settings.items() if v is not None}
        if state is None:
            return TrainConfig(**explicit).resolved(), None, None
        saved = TrainConfig.from_dict(state["config"])
        for key in ("model", "dataset"):
            if key in explicit and explicit[key] != getattr(saved, key):
                raise ckpt.CheckpointError(
                    f"{path}: checkpoint is for {key} {getattr(saved, key)!r}, not "
                    f"{explicit[key]!r}; resume with the same {key} or start a new --output"
                )
        explicit.setdefault("output", output)
        merged = dataclasses.replace(saved, **explicit)
        return merged.resolved(), path, state

    def say(self, line):
        if getattr(self, "process", distributed.ProcessInfo()).is_main:
            Progress.write(line)
            if getattr(self, "records", None) is not None:
                self.records.log(line)

    def _build(self):
        from cnnkit.models import get_model, model_info

        config = self.config
        # A process group the caller set up is theirs to keep; one made here is ours to end.
        self.owns_process_group = not torch.distributed.is_initialized()
        self.process = distributed.init_process_group(parse_device(config.device).type)
        self.device = device = distributed.pick_device(config.device, self.process)
        if config.batch_size % self.process.world_size:
            raise ConfigError(f"batch_size: {config.batch_size} is not divisible by the "
                              f"{self.process.world_size} processes")
        if config.amp and config.amp_dtype == "float16" and device.type == "cpu":
            raise ConfigError("amp_dtype: float16 autocast needs CUDA; use bfloat16 on CPU")
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.train_set = load_dataset(config.dataset, config.data_dir, True).subset(
            config.limit_train)
        self.test_set = load_dataset(config.dataset, config.data_dir, False).subset(
            config.limit_test)
        channels = self.train_set.image_shape[0]
        self.model_kwargs = dict(num_classes=self.train_set.num_classes, in_channels=channels,
                                 fused=config.fused)
        model = get_model(config.model, **self.model_kwargs)
        input_size = model_info(config.model).input_size[1:]
        stats = (self.state["data_stats"] if self.state
                 else data_statistics(self.train_set, config.augmentations))
        self.data_stats = stats
        self.pipeline = InputPipeline(stats, input_size, config.augmentations,
                                      config.channels_last, config.ten_crop)
        if self.process.distributed:
            model = distributed.convert_sync_batchnorm(model, device.type)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=memory_format)
        self.optimizer = self._optimizer()
        milestones = config.step_milestones(max(input_size))
        self.scheduler = build_scheduler(config.schedule, self.optimizer, config.epochs,
                                         scale=config.lr_scale, milestones=milestones)
        use_scaler = config.amp and config.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.generator = torch.Generator().manual_seed(config.seed)  # augmentation draws
        self.train_model = self.model
        if self.process.distributed:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            self.train_model = torch.compile(self.train_model)
        # DDP's forward may broadcast buffers, which would hang on the uneven evaluation
        # shards; evaluation runs the bare (or compiled bare) model.
        self.eval_model = self.model if self.process.distributed else self.train_model
        rank, world = self.process.rank, self.process.world_size
        self.skipped_files = {}
        loading = dict(workers=config.worker_count, on_skip=self._warn_unreadable, rank=rank,
                       world_size=world, device=device)
        self.train_loader = make_loader(self.train_set, config.batch_size // world,
                                        self.pipeline, train=True, shuffle=True,
                                        seed=config.seed, pad=True, **loading)
        self.test_loader = make_loader(self.test_set, config.eval_batch_size, self.pipeline,
                                       train=False, pad=False, **loading)

    def _warn_unreadable(self, path, reason):
        """A file that cannot be decoded is left out of its batches, said once, and counted."""
        self.skipped_files[path] = reason
        self.say(f"warning: skipping {path}: cannot decode it ({reason})")

    def _optimizer(self):
        config = self.config
        if config.optimizer == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=config.lr,
                                   momentum=config.momentum, weight_decay=config.weight_decay)
        return torch.optim.Adam(self.model.parameters(), lr=config.lr,
                                weight_decay=config.weight_decay)

    def _autocast(self):
        if not self.config.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.config.amp_dtype))

    # ---- checkpoints -------------------------------------------------------------------

    def _state(self, epoch, step, train_meter, epoch_seconds):
        rng = {"torch": torch.get_rng_state(), "augment": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.config.model,
            "model_kwargs": self.model_kwargs,
            "config": self.config.to_dict(),
            "epoch": epoch,
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "train_meter": train_meter.state.clone() if train_meter is not None else None,
            "epoch_seconds": epoch_seconds,
            "elapsed": self.elapsed,
            "history": self.history,
            "data_stats": self.data_stats,
            "classes": list(self.train_set.classes),
        }

    def _save(self, epoch, step, train_meter=None, epoch_seconds=0.0):
        if not self.process.is_main:
            return None
        state = self._state(epoch, step, train_meter, epoch_seconds)
        self.last_checkpoint = ckpt.save_rotating(state, self.config.output, epoch, step,
                                                  keep=self.config.keep_checkpoints)
        return self.last_checkpoint

    def _restore(self, path, state):
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as error:
            first_line = ckpt.describe_load_error(error)
            raise ckpt.CheckpointError(
                f"{path}: incompatible with this model or optimizer ({first_line}); "
                "resume with the settings it was written with, or start a new --output"
            ) from None
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["augment"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.history = list(state["history"])
        self.elapsed = state["elapsed"]
        self.say(f"resumed from {path} (epoch {state['epoch'] + 1}, step {state['step']})")
        return state["epoch"], state["step"]

    def _prepare_output(self):
        """A fresh run in a directory holding an earlier run's checkpoints replaces them,
        so that a later --resume cannot pick up the other run's state."""
        if not self.process.is_main:
            return
        os.makedirs(self.config.output, exist_ok=True)
        old = ckpt.list_checkpoints(self.config.output)
        if old:
            for path in old:
                os.unlink(path)
            for name in ("metrics.jsonl", "metrics.csv", "log.txt", "training.png"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.config.output, name))
            self.say(f"note: {self.config.output} held an earlier run; starting a new run "
                     "there (pass --resume to continue the earlier one)")

    def _set_aside_other_checkpoints(self, resume_path):
        """A run resumed into a directory holding checkpoints named after its resume point
        (another run's, or its own abandoned continuation) moves those aside: the rotation
        keeps the newest names, so they would outlive this run's checkpoints and a later
        --resume would continue them instead."""
        if not self.process.is_main:
            return
        others = ckpt.checkpoints_after(self.config.output, resume_path)
        if others:
            moved = ckpt.set_aside(others, self.config.output)
            self.say(f"note: {self.config.output} held {len(moved)} checkpoint(s) not part of "
                     f"the run resumed from {resume_path}; set aside in "
                     f"{os.path.dirname(moved[0])}")

    # ---- training ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self):
        """Loss and top-1/top-5 of the eval model on the test set (all processes)."""
        self.eval_model.eval()
        meter = ClassificationMeter(self.test_set.num_classes)
        for images, labels in self.test_loader:
            inputs = self.pipeline.evaluate(images)
            with self._autocast():
                if self.config.ten_crop:
                    probabilities = torch.stack(
                        [self.eval_model(crop).float().softmax(dim=1) for crop in inputs])
                    logits = probabilities.mean(dim=0).clamp_min(1e-12).log()
                else:
                    logits = self.eval_model(inputs).float()
            loss_sum = F.cross_entropy(logits, labels, reduction="sum")
            meter.update(logits, labels, loss_sum)
        meter.state = distributed.all_reduce_sum(meter.state, self.process, self.device)
        return meter.compute()

    def _train_epoch(self, epoch, start_step, meter, progress):
        world = self.process.world_size
        shard = (self.process.rank, world)
        self.train_model.train()
        self.train_loader.set_epoch(epoch)
        for step, (images, labels) in enumerate(self.train_loader.iter_from(start_step),
                                                start_step):
            inputs = self.pipeline.train(images, self.generator, shard)
            with self._autocast():
                logits = self.train_model(inputs)
            loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            meter.update(logits, labels, loss.detach() * labels.shape[0])
            progress.advance(labels.shape[0] * world, meter, self.train_loader.decode_rate())
            if self.on_batch_end is not None:
                self.on_batch_end(self, epoch, step)
            if distributed.any_process(self.stop_requested, self.process, self.device):
                return step + 1
        return None

    def _epoch_record(self, epoch, lr, train, test, seconds, images):
        return {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train["loss"],
            "train_top1_acc": train["top1_acc"],
            "test_loss": test["loss"],
            "test_top1_acc": test["top1_acc"],
            "test_top1_err": test["top1_err"],
            "test_top5_err": test["top5_err"],
            "epoch_s": round(seconds, 3),
            "train_images_per_s": round(images / max(seconds, 1e-9), 1),
            "elapsed_s": round(self.elapsed, 3),
            "classes": list(self.train_set.classes),  # label i is classes[i]
        }

    def _describe(self, record):
        return (f"epoch {record['epoch']:>3}/{self.config.epochs}  lr {record['lr']:.2e}  "
                f"train loss {record['train_loss']:.4f} acc {100 * record['train_top1_acc']:.2f}%"
                f"  test loss {record['test_loss']:.4f} acc {100 * record['test_top1_acc']:.2f}%"
                f" top-5 err {100 * record['test_top5_err']:.2f}%  "
                f"{record['epoch_s']:.1f}s {record['train_images_per_s']:.0f} img/s")

    def run(self):
        self.config, resume_path, self.state = self._configure()
        _make_output_directory(self.config.output)
        threads = torch.get_num_threads()  # --threads applies to this run only
        try:
            with self._stop_on_sigint():
                result = self._run(resume_path)
            # Not in `finally`: after a failure on one rank the others would wait forever.
            distributed.wait_for_all(self.process)
            return result
        finally:
            torch.set_num_threads(threads)
            for name in ("train_loader", "test_loader"):
                if getattr(self, name, None) is not None:
                    getattr(self, name).close()  # worker processes
            if getattr(self, "owns_process_group", False):
                distributed.destroy_process_group()

    @contextlib.contextmanager
    def _stop_on_sigint(self):
        """First Ctrl-C: finish the step, checkpoint, return. Second: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            self.say("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _run(self, resume_path):
        config = self.config
        self.records = None
        self.history, self.elapsed, self.last_checkpoint = [], 0.0, None
        self._build()
        start_epoch, start_step = 0, 0
        if self.state is None:
            self._prepare_output()
        else:
            self._set_aside_other_checkpoints(resume_path)
        if self.process.is_main:
            stale = ckpt.remove_stale_temporaries(config.output)
            if stale:
                self.say(f"note: removed {len(stale)} partly written checkpoint(s) of killed runs")
            self.records = RunRecords(config.output)
        if self.state is not None:
            start_epoch, start_step = self._restore(resume_path, self.state)
        self.say(f"training {config.model} on {config.dataset} ({len(self.train_set)} train, "
                 f"{len(self.test_set)} test images, {self.train_set.num_classes} classes) for "
                 f"{config.epochs} epochs, batch {config.batch_size}, {config.optimizer}, "
                 f"{config.schedule} schedule, {self.device}, {self.process.world_size} "
                 f"process(es), {torch.get_num_threads()} threads; output {config.output}")
        caveat = config.ten_crop_caveat(config.ten_crop)
        if caveat:
            self.say(caveat)
        test = None
        for epoch in range(start_epoch, config.epochs):
            meter = ClassificationMeter(self.train_set.num_classes)
            seconds = 0.0
            if start_step:
                # The saved totals are already summed over processes: rank 0 carries them.
                if self.process.is_main:
                    meter.state = self.state["train_meter"].clone()
                seconds = self.state["epoch_seconds"]
            lr = self.optimizer.param_groups[0]["lr"]
            progress = Progress(len(self.train_loader), start_step, f"epoch {epoch + 1}/"
                                f"{config.epochs}", enabled=config.progress and
                                self.process.is_main)
            started = time.perf_counter()
            with progress:
                stopped_at = self._train_epoch(epoch, start_step, meter, progress)
            seconds += time.perf_counter() - started
            self.elapsed += time.perf_counter() - started
            if stopped_at is not None:
                return self._interrupted(epoch, stopped_at, meter, seconds, test)
            start_step = 0
            meter.state = distributed.all_reduce_sum(meter.state, self.process, self.device)
            images_seen = meter.count  # by all processes, this epoch (resumed part included)
            evaluating = time.perf_counter()
            test = self.evaluate()
            self.elapsed += time.perf_counter() - evaluating
            if isinstance(self.scheduler, DivideOnPlateau):
                self.scheduler.step(test["top1_err"])
            else:
                self.scheduler.step()
            record = self._epoch_record(epoch, lr, meter.compute(), test, seconds, images_seen)
            self.history.append(record)
            if self.process.is_main:
                self.records.write_history(self.history)
            self.say(self._describe(record))
            self._save(epoch + 1, 0)
            if distributed.any_process(self.stop_requested, self.process, self.device):
                return self._interrupted(epoch + 1, 0, None, 0.0, test)
        if test is None:  # resumed a finished run: report it again
            test = self.evaluate()
        return self._finish(test)

    def _interrupted(self, epoch, step, meter, seconds, test):
        if step:
            meter.state = distributed.all_reduce_sum(meter.state, self.process, self.device)
            self._save(epoch, step, meter, seconds)
        self.say(f"stopped; checkpoint {self.last_checkpoint}; continue with the same command "
                 "and --resume")
        return FitResult(self.config, self.history, test, self.last_checkpoint, True)

    def _finish(self, test):
        config = self.config
        if self.process.is_main and self.history:
            self.records.plot(self.history, f"{config.model} on {config.dataset}")
        if self.skipped_files:
            self.say(f"skipped {len(self.skipped_files)} image file(s) that cannot be decoded "
                     "(named above)")
        training = sum(record["epoch_s"] for record in self.history)
        self.say(f"{config.model} on {config.dataset}: test top-1 accuracy "
                 f"{100 * test['top1_acc']:.2f}%, top-5 error {100 * test['top5_err']:.2f}% "
                 f"({len(self.history)} epochs, {format_duration(training)} training, "
                 f"{format_duration(self.elapsed)} with evaluation)")
        return FitResult(config, self.history, test, self.last_checkpoint, False)
