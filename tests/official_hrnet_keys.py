"""State-dict keys and shapes of the official HRNet trunk, for the DEKR and SAHR key-name tests.

Enumerated from the structure of the official ``PoseHigherResolutionNet`` files (``lib/models/hrnet_dekr.py``
of DEKR, ``lib/models/pose_higher_hrnet.py`` of HigherHRNet and SWAHR), not from edgepose's model, so a
renamed or reshaped module shows up as a difference. Each family's test adds its heads' keys.
"""

from __future__ import annotations

Keys = dict[str, tuple[int, ...]]


def add_bn(keys: Keys, prefix: str, channels: int) -> None:
    for n in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.{n}"] = (channels,)
    keys[f"{prefix}.num_batches_tracked"] = ()


def add_basic_block(keys: Keys, prefix: str, channels: int) -> None:
    keys[f"{prefix}.conv1.weight"] = (channels, channels, 3, 3)
    add_bn(keys, f"{prefix}.bn1", channels)
    keys[f"{prefix}.conv2.weight"] = (channels, channels, 3, 3)
    add_bn(keys, f"{prefix}.bn2", channels)


def trunk_keys(
    width: int,
    stem: int = 64,
    stem_blocks: int = 4,
    modules: tuple[int, int, int] = (1, 4, 3),
    blocks: int = 4,
    last_multi_scale: bool = True,
) -> Keys:
    """Stem, Bottleneck ``layer1``, transitions and stages 2-4 with their fuse layers.

    ``last_multi_scale=False`` is HigherHRNet's last module, which fuses into the finest branch only.
    The released configs are the defaults; the other values only shrink it for test files.
    """
    keys: Keys = {}
    keys["conv1.weight"] = (stem, 3, 3, 3)
    add_bn(keys, "bn1", stem)
    keys["conv2.weight"] = (stem, stem, 3, 3)
    add_bn(keys, "bn2", stem)
    for i in range(stem_blocks):
        keys[f"layer1.{i}.conv1.weight"] = (stem, stem if i == 0 else 4 * stem, 1, 1)
        add_bn(keys, f"layer1.{i}.bn1", stem)
        keys[f"layer1.{i}.conv2.weight"] = (stem, stem, 3, 3)
        add_bn(keys, f"layer1.{i}.bn2", stem)
        keys[f"layer1.{i}.conv3.weight"] = (4 * stem, stem, 1, 1)
        add_bn(keys, f"layer1.{i}.bn3", 4 * stem)
    keys["layer1.0.downsample.0.weight"] = (4 * stem, stem, 1, 1)
    add_bn(keys, "layer1.0.downsample.1", 4 * stem)
    ch = [width * 2**b for b in range(4)]
    keys["transition1.0.0.weight"] = (ch[0], 4 * stem, 3, 3)
    add_bn(keys, "transition1.0.1", ch[0])
    keys["transition1.1.0.0.weight"] = (ch[1], 4 * stem, 3, 3)
    add_bn(keys, "transition1.1.0.1", ch[1])
    for t, b in ((2, 2), (3, 3)):
        keys[f"transition{t}.{b}.0.0.weight"] = (ch[b], ch[b - 1], 3, 3)
        add_bn(keys, f"transition{t}.{b}.0.1", ch[b])
    for stage, n_modules in zip((2, 3, 4), modules, strict=True):
        nb = stage
        for m in range(n_modules):
            p = f"stage{stage}.{m}"
            for br in range(nb):
                for blk in range(blocks):
                    add_basic_block(keys, f"{p}.branches.{br}.{blk}", ch[br])
            last = stage == 4 and m == n_modules - 1
            rows = 1 if last and not last_multi_scale else nb
            for i in range(rows):
                for j in range(nb):
                    if j > i:
                        keys[f"{p}.fuse_layers.{i}.{j}.0.weight"] = (ch[i], ch[j], 1, 1)
                        add_bn(keys, f"{p}.fuse_layers.{i}.{j}.1", ch[i])
                    elif j < i:
                        for s in range(i - j):
                            out = ch[i] if s == i - j - 1 else ch[j]
                            keys[f"{p}.fuse_layers.{i}.{j}.{s}.0.weight"] = (out, ch[j], 3, 3)
                            add_bn(keys, f"{p}.fuse_layers.{i}.{j}.{s}.1", out)
    return keys
