"""Every preset against its source, transcribed here by hand and independently of the preset code:
the arguments each official launch script passes (OpenGVLab/VideoMAEv2 at 29eab1e, scripts/), on
top of its entry point's argparse defaults, translated to our field names; the distillation
presets against the paper's Table 16. A preset must hold exactly these fields with these values.
"""
import json

import pytest

from vmae2_fast.cli import config_for
from vmae2_fast.config.presets import PRESETS, NoRecipeError, Recipe, recipes

# run_mae_pretraining.py defaults (argparse), the fields a recipe sets.
PT_DEFAULTS = {"batch_size": 64, "epochs": 300, "save_ckpt_freq": 50, "tubelet_size": 2,
               "with_checkpoint": False, "decoder_depth": 4, "mask_ratio": 0.9,
               "decoder_mask_ratio": 0.0, "input_size": 224, "drop_path": 0.0,
               "normlize_target": True, "opt_eps": 1e-8, "clip_grad": None, "weight_decay": 0.05,
               "weight_decay_end": None, "lr": 1.5e-4, "min_lr": 1e-5, "warmup_epochs": 40,
               "num_frames": 16, "sampling_rate": 4, "num_sample": 1}
# run_class_finetuning.py defaults.
FT_DEFAULTS = {"batch_size": 64, "epochs": 30, "save_ckpt_freq": 100, "tubelet_size": 2,
               "input_size": 224, "with_checkpoint": False, "drop_path": 0.1,
               "head_drop_rate": 0.0, "opt_eps": 1e-8, "clip_grad": None, "weight_decay": 0.05,
               "weight_decay_end": None, "lr": 1e-3, "layer_decay": 0.75, "min_lr": 1e-6,
               "warmup_epochs": 5, "num_sample": 2, "aa": "rand-m7-n4-mstd0.5-inc1",
               "smoothing": 0.1, "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0,
               "mixup_switch_prob": 0.5, "init_scale": 0.001, "short_side_size": 224,
               "num_frames": 16, "sampling_rate": 4}
# What each --data_set means in the official dataset builder: (our name, classes, flip, TSN sampling).
DATA_SETS = {"Kinetics-400": ("k400", 400, True, False), "Kinetics-600": ("k600", 600, True, False),
             "Kinetics-710": ("k710", 710, True, False), "SSV2": ("ssv2", 174, False, True),
             "UCF101": ("ucf101", 101, True, False), "HMDB51": ("hmdb51", 51, True, False)}

B, L, H, G = "vit_b", "vit_l", "vit_h", "vit_g"
PT_COMMON = dict(mask_ratio=0.9, decoder_mask_ratio=0.5, decoder_depth=4, batch_size=32, num_sample=4,
                 num_frames=16, sampling_rate=4, opt_betas=(0.9, 0.95))
FT_COMMON = dict(opt_betas=(0.9, 0.999), input_size=224, short_side_size=224, num_frames=16,
                 save_ckpt_freq=10)
KINETICS_AFTER_K710 = dict(FT_COMMON, batch_size=3, sampling_rate=4, num_sample=2, lr=1e-5, drop_path=0.25,
                           layer_decay=0.9, weight_decay=0.1, warmup_epochs=1, epochs=3)

# (stage, preset, model): (the script, the arguments it passes)
SCRIPTS = {
    ("pretrain", "hybrid", B): ("vit_b_hybrid_pt.sh", dict(
        PT_COMMON, lr=1e-3, warmup_epochs=20, save_ckpt_freq=20, epochs=200)),
    ("pretrain", "hybrid", L): ("vit_l_hybrid_pt.sh", dict(
        PT_COMMON, lr=1e-3, warmup_epochs=30, save_ckpt_freq=20, epochs=300)),
    ("pretrain", "hybrid", H): ("vit_h_hybrid_pt.sh", dict(
        PT_COMMON, with_checkpoint=True, lr=1e-3, warmup_epochs=30, save_ckpt_freq=10, epochs=300)),
    ("pretrain", "hybrid", G): ("vit_g_hybrid_pt.sh", dict(
        PT_COMMON, with_checkpoint=True, lr=6e-4, clip_grad=0.02, warmup_epochs=30,
        save_ckpt_freq=5, epochs=300)),
    ("post_pretrain", "k710", B): ("vit_b_k710_ft.sh", dict(
        FT_COMMON, data_set="Kinetics-710", nb_classes=710, batch_size=16, sampling_rate=4,
        num_sample=2, lr=7e-4, drop_path=0.1, head_drop_rate=0.0, layer_decay=0.75,
        warmup_epochs=5, epochs=90)),
    ("post_pretrain", "k710", H): ("vit_h_k710_ft.sh", dict(
        FT_COMMON, data_set="Kinetics-710", nb_classes=710, batch_size=4, sampling_rate=4,
        num_sample=2, lr=1e-3, warmup_lr=1e-8, min_lr=1e-6, drop_path=0.2, head_drop_rate=0.5,
        layer_decay=0.8, weight_decay=0.05, warmup_epochs=5, epochs=40)),
    ("post_pretrain", "k710", G): ("vit_g_k710_ft.sh", dict(
        FT_COMMON, data_set="Kinetics-710", nb_classes=710, batch_size=3, sampling_rate=4,
        num_sample=2, lr=1e-3, drop_path=0.3, clip_grad=5.0, layer_decay=0.9, weight_decay=0.1,
        warmup_epochs=5, epochs=35)),
    ("finetune", "k400_from_pt", B): ("vit_b_k400_ft.sh", dict(
        FT_COMMON, data_set="Kinetics-400", batch_size=16, sampling_rate=4, lr=7e-4,
        weight_decay=0.05, layer_decay=0.75, epochs=90)),
    ("finetune", "k400_from_pt", L): ("vit_l_k400_ft.sh", dict(
        FT_COMMON, data_set="Kinetics-400", batch_size=6, sampling_rate=4, lr=2e-3, drop_path=0.2,
        layer_decay=0.75, weight_decay=0.05, epochs=35)),
    ("finetune", "k400_from_pt", H): ("vit_h_k400_ft.sh", dict(
        FT_COMMON, data_set="Kinetics-400", nb_classes=400, batch_size=4, sampling_rate=4,
        num_sample=2, lr=1e-3, drop_path=0.2, head_drop_rate=0.5, layer_decay=0.8,
        weight_decay=0.05, warmup_epochs=5, epochs=40)),
    ("finetune", "k400_from_pt", G): ("vit_g_k400_ft.sh", dict(
        FT_COMMON, data_set="Kinetics-400", nb_classes=400, batch_size=3, sampling_rate=4,
        num_sample=2, lr=1e-3, drop_path=0.2, layer_decay=0.9, weight_decay=0.1, warmup_epochs=5,
        epochs=30)),
    ("finetune", "k600_from_pt", H): ("vit_h_k600_ft.sh", dict(
        FT_COMMON, data_set="Kinetics-600", nb_classes=600, batch_size=4, sampling_rate=4,
        num_sample=2, lr=1e-3, drop_path=0.2, head_drop_rate=0.5, layer_decay=0.8,
        weight_decay=0.05, warmup_epochs=5, epochs=40)),
    ("finetune", "ssv2_from_pt", B): ("vit_b_ssv2_ft.sh", dict(
        FT_COMMON, data_set="SSV2", nb_classes=174, batch_size=16, num_sample=2, lr=2e-3,
        layer_decay=0.65, weight_decay=0.05, epochs=25)),
    ("finetune", "ssv2_from_pt", L): ("vit_l_ssv2_ft.sh", dict(
        FT_COMMON, data_set="SSV2", nb_classes=174, batch_size=6, num_sample=2, lr=5e-4,
        weight_decay=0.05, drop_path=0.2, epochs=20)),
    ("finetune", "ssv2_from_pt", H): ("vit_h_ssv2_ft.sh", dict(
        FT_COMMON, data_set="SSV2", nb_classes=174, batch_size=4, num_sample=2, lr=5e-4,
        weight_decay=0.05, drop_path=0.2, layer_decay=0.8, epochs=20)),
    ("finetune", "ssv2_from_pt", G): ("vit_g_ssv2_ft.sh", dict(
        FT_COMMON, data_set="SSV2", nb_classes=174, batch_size=3, sampling_rate=4, num_sample=2,
        lr=3e-4, drop_path=0.25, layer_decay=0.9, weight_decay=0.05, warmup_epochs=5, epochs=20)),
    # vit_g_k710_it_k400_ft.sh and vit_g_k710_it_k600_ft.sh differ only in the data set
    ("finetune", "k400_from_k710", G): ("vit_g_k710_it_k400_ft.sh", dict(
        KINETICS_AFTER_K710, data_set="Kinetics-400", nb_classes=400)),
    ("finetune", "k600_from_k710", G): ("vit_g_k710_it_k600_ft.sh", dict(
        KINETICS_AFTER_K710, data_set="Kinetics-600", nb_classes=600)),
    ("finetune", "ucf101_from_k710", G): ("vit_g_k710_it_ucf101_ft.sh", dict(
        FT_COMMON, data_set="UCF101", nb_classes=101, batch_size=3, num_sample=2, sampling_rate=4,
        lr=1e-3, layer_decay=0.9, weight_decay=0.05, epochs=50, drop_path=0.35, head_drop_rate=0.5)),
    ("finetune", "hmdb51_from_k710", G): ("vit_g_k710_it_hmdb51_ft.sh", dict(
        FT_COMMON, data_set="HMDB51", nb_classes=51, batch_size=3, num_sample=2, sampling_rate=2,
        lr=5e-4, layer_decay=0.9, weight_decay=0.05, epochs=15, drop_path=0.35, head_drop_rate=0.5)),
}

# Paper Table 16 (distillation; no official script): student ViT-B, per-process batch for 64 GPUs.
TABLE16 = {
    ("distill", "k710", B): dict(lr=1e-3, batch_size=1024 // 64, dataset=("k710", 710, True, False)),
    ("distill", "ssv2", B): dict(lr=5e-4, batch_size=512 // 64, dataset=("ssv2", 174, False, True)),
}
TABLE16_SHARED = dict(betas=(0.9, 0.999), weight_decay=0.05, warmup_epochs=5, epochs=100,
                      aa="rand-m7-n4-mstd0.5-inc1", mixup=0.8, cutmix=1.0, drop_path=0.1,
                      head_drop=0.0, layer_decay=0.75)

RENAME = {"opt_betas": "betas", "head_drop_rate": "head_drop", "with_checkpoint": "activation_checkpointing",
          "save_ckpt_freq": "save_every", "normlize_target": "normalize_target", "nb_classes": "num_classes"}


def expected_from_script(stage, args):
    official = {**(PT_DEFAULTS if stage == "pretrain" else FT_DEFAULTS), **args}
    out = {RENAME.get(k, k): v for k, v in official.items() if k not in ("data_set", "warmup_lr")}
    # The official schedulers never receive --warmup_lr: every official warm-up starts at 0.
    out["warmup_lr"] = 0.0
    if stage != "pretrain":
        name, classes, flip, sparse = DATA_SETS[official.get("data_set", "Kinetics-400")]
        out.update(dataset=name, num_classes=classes, flip=flip, sparse_sample=sparse)
    return out


def test_every_official_recipe_is_in_the_table_and_back():
    ours = {(s, p, m) for s, p, m, _, _ in recipes()}
    assert ours == set(SCRIPTS) | set(TABLE16)


@pytest.mark.parametrize("key", sorted(SCRIPTS), ids=lambda k: "-".join(k))
def test_preset_equals_its_script(key):
    stage, preset, model = key
    script, args = SCRIPTS[key]
    recipe = PRESETS[stage][preset]
    assert recipe.sources()[model].endswith(script)
    assert recipe(model) == expected_from_script(stage, args)


@pytest.mark.parametrize("key", sorted(TABLE16), ids=lambda k: "-".join(k))
def test_distill_preset_equals_table16(key):
    stage, preset, model = key
    row = dict(TABLE16[key])
    name, classes, flip, sparse = row.pop("dataset")
    got = PRESETS[stage][preset](model)
    want = {**TABLE16_SHARED, **row, "dataset": name, "num_classes": classes, "flip": flip,
            "sparse_sample": sparse}
    assert {k: got[k] for k in want} == want


def test_uncovered_sizes_and_bare_names_are_refused_with_the_choices():
    with pytest.raises(NoRecipeError, match="vit_b, vit_l, vit_h, vit_g only.*--preset-model"):
        config_for("finetune", ["--preset", "k400_from_pt", "--model", "vit_s"])
    with pytest.raises(NoRecipeError, match="k400_from_pt.*k400_from_k710"):
        config_for("finetune", ["--preset", "k400", "--model", "vit_g"])
    with pytest.raises(NoRecipeError, match="--dataset diving48"):
        config_for("finetune", ["--preset", "diving48"])
    with pytest.raises(NoRecipeError, match="vit_b, vit_h, vit_g"):
        config_for("post_pretrain", ["--preset", "k710", "--model", "vit_l"])


def test_documented_rules_apply_only_when_asked():
    # another size's values, unchanged
    cfg = config_for("finetune", ["--preset", "k400_from_pt", "--model", "vit_s", "--preset-model", "vit_b"])
    assert (cfg.model, cfg.lr, cfg.epochs, cfg.batch_size) == ("vit_s", 7e-4, 90, 16)
    # another dataset under a recipe: its classes and sampling, the recipe's optimiser values
    cfg = config_for("finetune", ["--preset", "k400_from_k710", "--model", "vit_g", "--dataset", "k700"])
    assert (cfg.num_classes, cfg.dataset, cfg.lr, cfg.epochs) == (700, "k700", 1e-5, 3)
    cfg = config_for("finetune", ["--preset", "k400_from_pt", "--model", "vit_b", "--dataset", "ssv2"])
    assert (cfg.num_classes, cfg.flip, cfg.sparse_sample) == (174, False, True)
    # typed flags still win over both
    cfg = config_for("finetune", ["--preset", "ssv2_from_pt", "--model", "vit_b", "--lr", "1e-4",
                                  "--num-classes", "0"])
    assert (cfg.lr, cfg.num_classes) == (1e-4, 0)
    # the default preset of a stage falls back (with a warning) for a model without any recipe
    assert config_for("pretrain", ["--model", "vit_micro"]).preset == "none"
    with pytest.raises(NoRecipeError):
        config_for("pretrain", ["--model", "vit_micro", "--preset", "hybrid"])


@pytest.mark.parametrize("stage", ["pretrain", "post_pretrain", "finetune", "distill", "evaluate",
                                   "extract_features", "hf_export"])
def test_print_config_prints_the_resolved_config_and_exits(stage, capsys):
    argv = {"pretrain": ["--model", "vit_g"], "post_pretrain": ["--model", "vit_h"],
            "finetune": ["--preset", "ssv2_from_pt", "--model", "vit_l", "--lr", "1e-4"],
            "distill": ["--model", "vit_b"], "evaluate": ["--checkpoint", "c.pth"],
            "extract_features": ["--checkpoint", "c.pth", "--videos", "v", "--out", "o"],
            "hf_export": ["--checkpoint", "c.pth", "--model", "vit_b", "--out", "o"]}[stage]
    with pytest.raises(SystemExit) as e:
        config_for(stage, argv + ["--print-config"])
    assert e.value.code == 0
    cfg = json.loads(capsys.readouterr().out)
    if stage == "pretrain":
        # the script's with_cp (full) is left to auto: the run plans its own checkpointing
        assert (cfg["lr"], cfg["clip_grad"], cfg["activation_checkpointing"]) == (6e-4, 0.02, "auto")
    if stage == "finetune":     # preset, then the typed flag
        assert (cfg["lr"], cfg["drop_path"], cfg["num_classes"], cfg["epochs"]) == (1e-4, 0.2, 174, 20)
    if stage == "evaluate":
        assert cfg["checkpoint"] == "c.pth"


def test_every_recipe_names_its_source():
    for stage, presets in PRESETS.items():
        for name, r in presets.items():
            if isinstance(r, Recipe):
                assert all(src.startswith(("scripts/", "paper")) for src in r.sources().values())
