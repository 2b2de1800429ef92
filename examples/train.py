"""Train a ResNet with resnet_ext on ImageFolder data (or --fake-data): AMP, channels_last, SGD with the usual
ImageNet recipe (momentum, weight decay, label smoothing, linear warm-up then cosine LR), checkpoints that resume
exactly (model, optimizer, LR schedule, grad scaler, step, RNG states), and several processes with torchrun
(DistributedDataParallel; NCCL on GPUs, gloo on CPUs; --sync-bn for cross-process BatchNorm statistics).

    python examples/train.py --data /imagenet --arch resnet50 --epochs 90 --batch-size 256 --amp bf16
    torchrun --nproc_per_node 8 examples/train.py --data /imagenet --batch-size 128 --sync-bn
    python examples/train.py --fake-data --steps 10 --device cpu          # a smoke run anywhere
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

import resnet_ext


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


def image_folder(root: str, image_size: int):
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    return datasets.ImageFolder(os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root,
                                transforms.Compose([transforms.RandomResizedCrop(image_size),
                                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                                    normalize]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="ImageFolder root (uses ROOT/train if present)")
    data.add_argument("--fake-data", action="store_true", help="deterministic synthetic images")
    p.add_argument("--fake-size", type=int, default=64, help="images in the fake data set")
    p.add_argument("--num-classes", type=int, default=None, help="default: the data set's (10 for fake data)")
    p.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101",
                                                          "resnet152", "resnext50_32x4d", "wide_resnet50_2"])
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=0.1, help="for 256 images per step; scaled with the global batch")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None, help="default: bf16 on CUDA, none on CPU")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics across all processes")
    p.add_argument("--output-dir", default="train-out")
    p.add_argument("--resume", default=None, help="a checkpoint written by this script")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps of this run, as a preempted job would")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on GPU)")
    return p.parse_args(argv)


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


def save_checkpoint(path: str, model, optimizer, scheduler, scaler, step: int, args) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "arch": args.arch, "num_classes": args.num_classes,
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint


def main(argv=None) -> int:
    args = parse_args(argv)
    device_kind = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
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

    dataset = (FakeImages(args.fake_size, args.image_size, args.num_classes or 10, args.seed) if args.fake_data
               else image_folder(args.data, args.image_size))
    args.num_classes = args.num_classes or (10 if args.fake_data else len(dataset.classes))
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"batch size {args.batch_size} x {world} processes is larger than the data set")
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
    warmup = int(args.warmup_epochs * steps_per_epoch)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    step = 0
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step = ckpt["step"]
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if ckpt["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng_cuda"]])
        if rank == 0:
            print(f"resumed from {args.resume} at step {step}")

    os.makedirs(args.output_dir, exist_ok=True)
    ckpt_path = os.path.join(args.output_dir, "checkpoint.pt")
    ddp.train()
    t0, seen = time.perf_counter(), 0
    stop_at = min(total_steps, step + args.stop_after) if args.stop_after else total_steps
    while step < stop_at:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        # Mid-epoch resume: the rest of this epoch's shard, in the order an uninterrupted run would see it.
        indices = list(sampler)[skip * args.batch_size:]
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=indices, drop_last=True,
                            num_workers=0 if args.fake_data else args.workers, pin_memory=device.type == "cuda")
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
            if rank == 0 and args.save_every and step % args.save_every == 0:
                save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, step, args)
            if step >= stop_at:
                break
    if rank == 0:
        save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, step, args)
        print(f"saved {ckpt_path}")
    print(f"final weights sha256 (rank {rank}): {weights_digest(model)}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
