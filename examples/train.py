"""Train a ResNet with resnet_ext on ImageFolder data (or --fake-data): AMP, channels_last, SGD with the usual
ImageNet recipe (momentum, weight decay, label smoothing, linear warm-up then cosine LR), checkpoints that resume
exactly (model, optimizer, LR schedule, grad scaler, step, RNG states), and several processes with torchrun
(DistributedDataParallel; NCCL on GPUs, gloo on CPUs; --sync-bn for cross-process BatchNorm statistics).

    python examples/train.py --data /imagenet --arch resnet50 --epochs 90 --batch-size 256 --amp bf16
    torchrun --nproc_per_node 8 examples/train.py --data /imagenet --batch-size 128 --sync-bn
    python examples/train.py --fake-data --steps 10 --device cpu          # a smoke run anywhere

Nothing is lost to a bad argument or an interruption: every argument (and --output-dir's writability, and a
--resume checkpoint's architecture, keys and shapes) is checked before training starts, with one line and exit
code 2; SIGTERM or SIGINT (a preempted job, Ctrl-C) finishes the current step, saves the checkpoint, and exits with
128 + the signal number (143, 130), all processes of a torchrun job at the same step (a second signal aborts
without saving); checkpoints are written to a temporary file and renamed into place, and temporary files left by
a killed save are removed at the next start.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import math
import os
import re
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

import resnet_ext
from resnet_ext import cli
from resnet_ext.cli import OneLineArgumentParser, number


class FakeImages(Dataset):
    """A deterministic synthetic data set: image i is a function of (seed, i) alone."""

    def __init__(self, size: int, image_size: int, num_classes: int, seed: int = 0):
        self.size, self.image_size, self.num_classes, self.seed = size, image_size, num_classes, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        image = torch.randn(3, self.image_size, self.image_size, generator=g)
        return image, int(torch.randint(0, self.num_classes, (1,), generator=g))


class ImageError(Exception):
    """An image of the data set that cannot be read; the message names its file."""


def load_image(path: str):
    """torchvision's ImageFolder loader, its error naming the file (PIL's says only what was wrong)."""
    from torchvision.datasets.folder import default_loader
    try:
        return default_loader(path)
    except Exception as e:
        raise ImageError(f"{path}: {type(e).__name__}: {e}") from None


def image_folder(root: str, image_size: int):
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    return datasets.ImageFolder(os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root,
                                transforms.Compose([transforms.RandomResizedCrop(image_size),
                                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                                    normalize]), loader=load_image)


PROG = "examples/train.py"
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # the optimizer's hyperparameters meet fp32 parameters
ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]


CREATED_DIRS: list = []  # the folders check_output_dir made for --output-dir, deepest first


def fail(message: str, code: int = 2):
    """One line on stderr and exit: the error is in what was asked for (or in the files it names). Folders this run
    made for --output-dir and left empty are removed (a failed start leaves nothing behind)."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    for d in CREATED_DIRS:
        with contextlib.suppress(OSError):  # not empty (a saved checkpoint), or gone: kept as it is
            os.rmdir(d)
    CREATED_DIRS.clear()
    raise SystemExit(code)


def parse_args(argv=None):
    p = OneLineArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="ImageFolder root (uses ROOT/train if present)")
    data.add_argument("--fake-data", action="store_true", help="deterministic synthetic images")
    p.add_argument("--fake-size", type=number(int, 1), default=64, help="images in the fake data set")
    p.add_argument("--num-classes", type=number(int, 1), default=None,
                   help="default: the data set's (10 for fake data)")
    p.add_argument("--arch", default="resnet50", choices=ARCHS)
    p.add_argument("--epochs", type=number(int, 1), default=90)
    p.add_argument("--steps", type=number(int, 1), default=None, help="stop after this many optimizer steps in total")
    p.add_argument("--batch-size", type=number(int, 1), default=64, help="per process")
    p.add_argument("--lr", type=number(float, 0, FLOAT32_MAX, lo_open=True), default=0.1,
                   help="for 256 images per step; scaled with the global batch")
    p.add_argument("--momentum", type=number(float, 0, 1), default=0.9)
    p.add_argument("--weight-decay", type=number(float, 0, FLOAT32_MAX), default=1e-4)
    p.add_argument("--label-smoothing", type=number(float, 0, 1, hi_open=True), default=0.0)
    p.add_argument("--warmup-epochs", type=number(float, 0), default=0.0)
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None, help="default: bf16 on CUDA, none on CPU")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available")
    p.add_argument("--image-size", type=number(int, 32), default=224)
    p.add_argument("--workers", type=number(int, 0), default=4)
    p.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics across all processes")
    p.add_argument("--output-dir", default="train-out", help="created if needed; checked writable at the start")
    p.add_argument("--resume", default=None, help="a checkpoint written by this script")
    p.add_argument("--save-every", type=number(int, 0), default=0, help="also checkpoint every N steps")
    p.add_argument("--stop-after", type=number(int, 1), default=None,
                   help="stop (with a checkpoint) after this many steps of this run, as a preempted job would")
    p.add_argument("--log-every", type=number(int, 1), default=10)
    p.add_argument("--seed", type=number(int, 0, 2 ** 32 - 1), default=0)  # (FakeImages scales it: 64 bits)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on GPU)")
    return p.parse_args(argv)


def check_arguments(args) -> str:
    """Everything that can be checked before any work (all processes check alike, so all exit alike). Returns the
    device kind."""
    device_kind = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_kind == "cuda":
        if not torch.cuda.is_available():
            fail("argument --device: cuda is not available here (" + ("this torch is built without CUDA"
                 if torch.version.cuda is None else "no CUDA device is visible") + "); use --device cpu")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            fail(f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s): "
                 f"use at most --nproc_per_node {torch.cuda.device_count()}")
    if args.data is not None and not os.path.isdir(args.data):
        fail(f"argument --data: {args.data}: " + ("not a directory" if os.path.exists(args.data) else
                                                  "no such directory"))
    if args.resume is not None and not os.path.isfile(args.resume):
        fail(f"argument --resume: {args.resume}: " + ("is a directory, not a checkpoint file"
                                                       if os.path.isdir(args.resume) else "no such file"))
    if args.batch_size * math.ceil(args.image_size / 32) ** 2 < 2:
        fail(f"--batch-size {args.batch_size} with --image-size {args.image_size} leaves one value per channel in "
             f"the last BatchNorm, which cannot train: use a larger batch or image")
    try:
        cli.check_batch_fits(args.batch_size, args.image_size, torch.device(device_kind, 0 if device_kind == "cuda"
                                                                             else None),
                             f"--batch-size {args.batch_size} --image-size {args.image_size}")
    except cli.UserError as e:
        fail(str(e))
    if args.fake_data and args.fake_size * 8 > cli.memory_bytes(torch.device("cpu")):
        fail(f"argument --fake-size: {args.fake_size} images need {args.fake_size * 8 / 2 ** 30:.3g} GiB for the "
             f"sampler's order alone, more than this machine has")
    check_output_dir(args.output_dir)
    return device_kind


def check_output_dir(path: str) -> None:
    # Each folder the path names that is missing (not normalized: makedirs("a/../b") makes "a" too).
    missing, d = [], os.path.join(os.getcwd(), path)
    while not os.path.exists(d) and d != os.path.dirname(d):
        if os.path.basename(d) not in ("", ".", ".."):
            missing.append(d)
        d = os.path.dirname(d)
    try:
        cli.check_output_dir(path, "argument --output-dir:")
    except cli.UserError as e:
        fail(str(e))
    CREATED_DIRS[:] = missing


def remove_stale_temporaries(ckpt_path: str) -> None:
    """Temporary files of saves that were killed (this script's, and the older checkpoint.pt.tmp name)."""
    d, base = os.path.split(ckpt_path)
    for tmp in glob.glob(os.path.join(d, f".{glob.escape(base)}.*.tmp")) + glob.glob(ckpt_path + ".tmp"):
        with contextlib.suppress(OSError):
            os.remove(tmp)
            print(f"removed {tmp}, left by an interrupted save", flush=True)


def setup_distributed(device_kind: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local_rank


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str, model, optimizer, scheduler, scaler, step: int, args, world: int) -> None:
    """Atomically: written to a temporary file in the same directory, flushed to disk, then renamed over `path`,
    so `path` is always a whole checkpoint; the temporary file is removed if the save fails."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "arch": args.arch, "num_classes": args.num_classes,
             "batch_size": args.batch_size, "world_size": world,
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    d, base = os.path.split(path)
    tmp = os.path.join(d, f".{base}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            fail(f"could not write the checkpoint {path} ({e.strerror or type(e).__name__})", code=1)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(d or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "arch", "num_classes", "rng_cpu")


def load_resume(path: str, args, model):
    """The checkpoint at `path`, checked against this run (arch, classes, keys, shapes) with one-line errors."""
    from resnet_ext.weights import check_state_dict

    what = f"argument --resume: {path}"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, ...
        first = cli.first_sentence(e)
        fail(f"{what}: not a readable checkpoint ({type(e).__name__}: {first})")
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in CHECKPOINT_KEYS):
        if isinstance(ckpt, dict) and any(isinstance(v, torch.Tensor) for v in ckpt.values()):
            fail(f"{what}: holds model weights only; --resume needs a checkpoint written by this script "
                 f"(model, optimizer, LR schedule, step, RNG states)")
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        fail(f"{what}: not a checkpoint written by this script (no {', '.join(map(repr, missing))})")
    if ckpt["arch"] != args.arch:
        fail(f"{what}: a {ckpt['arch']} checkpoint, but --arch is {args.arch} (pass --arch {ckpt['arch']})")
    if ckpt["num_classes"] != args.num_classes:
        fail(f"{what}: has {ckpt['num_classes']} classes, but this run has {args.num_classes} "
             f"(--num-classes or the data set)")
    try:
        check_state_dict(model, ckpt["model"], what, args.arch)
    except RuntimeError as e:
        fail(str(e))
    return ckpt


class StopSignals:
    """SIGTERM/SIGINT ask the training loop to stop after the current step (and save); a second one aborts."""

    def __init__(self):
        self.signum = None
        self.aborted = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal (nohup, background job) stays so
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            self.aborted = True  # (inside torch.save the KeyboardInterrupt comes back as its writer's RuntimeError)
            raise KeyboardInterrupt  # the second signal: abort now, without a checkpoint of this step
        self.signum = signum


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's init: SIGTERM and SIGINT sent to the whole process group (a scheduler's preemption,
    Ctrl-C) are the main process's to act on (finish the step, save); a worker they killed made the loader raise in
    the middle of that step. The main process's loader shuts its workers down as it exits."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def aborted(step: int) -> int:
    print(f"{PROG}: aborted at step {step}; the last saved checkpoint (if any) is intact", file=sys.stderr)
    return 130


def main(argv=None) -> int:
    CREATED_DIRS.clear()  # (main called again in one process: not the folders of a run before)
    args = parse_args(argv)
    device_kind = check_arguments(args)
    world, rank, local_rank = setup_distributed(device_kind)
    device = torch.device(f"cuda:{local_rank}" if device_kind == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    torch.manual_seed(args.seed)  # the same initial weights in every process (DDP also broadcasts them)

    if args.fake_data:
        dataset = FakeImages(args.fake_size, args.image_size, args.num_classes or 10, args.seed)
    else:
        try:
            dataset = image_folder(args.data, args.image_size)
        except (FileNotFoundError, OSError) as e:  # no class folders, no images with a known extension
            fail(f"argument --data: {args.data}: {cli.first_sentence(e)}")
        if args.num_classes is not None and args.num_classes < len(dataset.classes):
            fail(f"argument --num-classes: {args.num_classes} is fewer than the {len(dataset.classes)} classes "
                 f"in {args.data}")
    args.num_classes = args.num_classes or (10 if args.fake_data else len(dataset.classes))
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // args.batch_size
    if steps_per_epoch == 0:
        fail(f"--batch-size {args.batch_size} x {world} process(es) is larger than the data set "
             f"({len(dataset)} images)")
    total_steps = args.steps or args.epochs * steps_per_epoch

    model = getattr(resnet_ext, args.arch)(num_classes=args.num_classes)
    if args.sync_bn:
        resnet_ext.convert_sync_batchnorm(model)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    lr = args.lr * args.batch_size * world / 256
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if args.warmup_epochs * steps_per_epoch > 2 ** 62:
        fail(f"argument --warmup-epochs: {args.warmup_epochs:g} epochs are more steps than a run can take")
    warmup = int(args.warmup_epochs * steps_per_epoch)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    step = 0
    if args.resume:
        ckpt = load_resume(args.resume, args, model)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["rng_cpu"].cpu())
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            fail(f"argument --resume: {args.resume}: its optimizer/schedule state does not fit this run "
                 f"({type(e).__name__}: {cli.first_sentence(e)})")
        step = ckpt["step"]
        if ckpt["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng_cuda"]])
        if rank == 0:
            print(f"resumed from {args.resume} at step {step}")
            was = (ckpt.get("batch_size"), ckpt.get("world_size"))
            if None not in was and was != (args.batch_size, world):
                print(f"warning: the checkpoint was written with --batch-size {was[0]} x {was[1]} process(es), "
                      f"this run has {args.batch_size} x {world}: samples and LR schedule differ from an "
                      f"uninterrupted run", file=sys.stderr)
            group = ckpt["optimizer"]["param_groups"][0]
            their_lr = ckpt["scheduler"]["base_lrs"][0] * 256 / (was[0] * was[1]) if None not in was else None
            kept = [f"--{name} {mine:g} (the checkpoint's: {theirs:g})" for name, mine, theirs in (
                        ("lr", args.lr, their_lr), ("momentum", args.momentum, group["momentum"]),
                        ("weight-decay", args.weight_decay, group["weight_decay"]))
                    if theirs is not None and not math.isclose(mine, theirs, rel_tol=1e-9)]
            if kept:  # the optimizer's state and the LR schedule are the checkpoint's: an exact continuation
                print(f"warning: {', '.join(kept)} {'is' if len(kept) == 1 else 'are'} not applied on --resume, "
                      f"which continues the checkpoint's optimizer and LR schedule", file=sys.stderr)

    ckpt_path = os.path.join(args.output_dir, "checkpoint.pt")
    if rank == 0:
        remove_stale_temporaries(ckpt_path)
    # Stop requests reach the processes of a job at different moments; they agree on the step to stop at over a
    # CPU (gloo) group, so the check never waits on the GPU.
    flag_group = dist.new_group(backend="gloo") if world > 1 else None

    def stop_requested(signals) -> bool:
        if flag_group is None:
            return signals.signum is not None
        flag = torch.tensor([signals.signum or 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=flag_group)
        if flag.item() and signals.signum is None:
            signals.signum = int(flag.item())
        return bool(flag.item())

    def save():
        if rank == 0:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, step, args, world)

    ddp.train()
    t0, seen = time.perf_counter(), 0
    stop_at = min(total_steps, step + args.stop_after) if args.stop_after else total_steps
    signals = StopSignals()
    try:
        with signals:
            while step < stop_at and not stop_requested(signals):
                epoch, skip = divmod(step, steps_per_epoch)
                sampler.set_epoch(epoch)
                # Mid-epoch resume: the rest of this epoch's shard, in the order an uninterrupted run would see it.
                indices = list(sampler)[skip * args.batch_size:]
                # Its own generator: a loader draws its workers' base seed as it starts, which from the global RNG
                # shifted the transforms' random numbers of a run resumed mid-epoch (it starts one loader more).
                workers = 0 if args.fake_data else args.workers
                loader = DataLoader(dataset, batch_size=args.batch_size, sampler=indices, drop_last=True,
                                    num_workers=workers, pin_memory=device.type == "cuda",
                                    worker_init_fn=ignore_stop_signals if workers else None,
                                    generator=torch.Generator().manual_seed(args.seed + epoch))
                for images, target in loader:
                    images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
                    target = target.to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss = F.cross_entropy(ddp(images), target, label_smoothing=args.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                    seen += images.shape[0] * world
                    if rank == 0 and (step % args.log_every == 0 or step == total_steps):
                        rate = seen / (time.perf_counter() - t0)
                        print(f"step {step}/{total_steps} epoch {epoch} loss {loss.item():.4f} "
                              f"lr {scheduler.get_last_lr()[0]:.4g} {rate:.1f} img/s", flush=True)
                    if args.save_every and step % args.save_every == 0:
                        save()
                    if step >= stop_at or stop_requested(signals):
                        break
            save()  # also on SIGTERM/SIGINT: the state after the last whole step
            stopped_by = signals.signum
    except KeyboardInterrupt:  # a second signal (or Ctrl-C outside the loop): no checkpoint of this step
        return aborted(step)
    except ImageError as e:  # raised between steps, while the next batch loads: the state of the last whole step
        # (From a DataLoader worker the message carries the worker's traceback; its last line is the error.)
        what = re.sub(r"^[\w.]*ImageError: ", "", str(e).strip().splitlines()[-1])
        if step > 0:
            save()
        fail(f"argument --data: an image cannot be read ({what})" +
             (f"; the state after step {step} is saved in {ckpt_path}" if step > 0 and rank == 0 else ""), code=1)
    except (RuntimeError, MemoryError) as e:
        if signals.aborted:  # the second signal, inside a save
            return aborted(step)
        if not cli.out_of_memory(e):
            raise
        fail(f"out of memory at step {step} with --batch-size {args.batch_size} --image-size {args.image_size} "
             f"({cli.first_sentence(e)})", code=1)
    if rank == 0:
        print(f"saved {ckpt_path} at step {step}", flush=True)
    print(f"final weights sha256 (rank {rank}): {weights_digest(model)}", flush=True)
    if world > 1:
        dist.barrier(group=flag_group)
        dist.destroy_process_group()
    if stopped_by is not None:
        if rank == 0:
            print(f"stopped by {signal.Signals(stopped_by).name} after step {step}; continue with "
                  f"--resume {ckpt_path}", file=sys.stderr, flush=True)
        return 128 + stopped_by
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
