"""Tiny nnU-Net v2 models in the folder layout TotalSegmentator loads, with constructed weights.

TotalSegmentator's real weights (~1 GB, downloaded) cannot reach an offline test machine. These
models go through exactly the code a real run does (TotalSegmentator's resampling and cropping,
nnU-Net's plans, CT normalisation, sliding-window prediction and export, the class-map header),
with a network small enough to build here: a two-stage PlainConvUNet without normalisation
whose weights make it a per-voxel HU classifier. Only the 3x3x3 kernels' centre taps and the
full-resolution path are non-zero, so each voxel's logits depend on its own normalised value x:

    step(a) = relu(k (x - a)) - relu(k (x - a) - 1)     (0 below a, 1 above a + 1/k)

    background: 0.5    lung: step(-9) - step(-3)    liver: step(0) - step(2)    bone: step(2)

With x = HU / 100 (CT normalisation with mean 0, sd 100, clipped at +-1000 HU): air below -900
HU and fat (-300..0 HU) are background, -900..-300 HU is ``lung_upper_lobe_left``, 0..200 HU
``liver`` and above 200 HU ``vertebrae_L1`` (TotalSegmentator "total" names; ids from the
installed class map). Every other class gets a logit of -10 and never wins.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from totalsegmentator.map_to_binary import class_map

from amdiff.contracts import ORGAN_LABELS

STEPS = (-9.0, -3.0, 0.0, 2.0)          # thresholds in x = HU / 100
GAIN = 20.0                               # k: each step rises over 5 HU
LUNG, LIVER, BONE = "lung_upper_lobe_left", "liver", "vertebrae_L1"
TRAINER_FOLDER = "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
FEATURES = 8                              # two channels per step
ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 2, "features_per_stage": [FEATURES, FEATURES],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
        "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1], "conv_bias": True,
        "norm_op": None, "norm_op_kwargs": None, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.ReLU", "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def _plans(dataset_name: str, spacing: float) -> dict:
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing] * 3,
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1000.0, "mean": 0.0, "median": 0.0, "min": -1000.0,
            "percentile_00_5": -1000.0, "percentile_99_5": 1000.0, "std": 100.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [16, 16, 16], "median_image_size_in_voxels": [64, 64, 64],
            "spacing": [spacing] * 3, "normalization_schemes": ["CTNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resample,
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
            "architecture": ARCH, "batch_dice": False}},
    }


def _network_weights(n_classes: int, ids: dict[str, int]) -> dict[str, torch.Tensor]:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    net = get_network_from_plans(ARCH["network_class_name"], ARCH["arch_kwargs"],
                                 ARCH["_kw_requires_import"], 1, n_classes, deep_supervision=False)
    # set through the modules, not state_dict keys: the decoder holds the encoder too, so each
    # encoder tensor appears under two keys and the second would overwrite the first on loading
    encoder_conv = net.encoder.stages[0][0].convs[0].conv
    decoder_conv = net.decoder.stages[0].convs[0].conv
    seg_layer = net.decoder.seg_layers[0]
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        # encoder stage 0 (full resolution): channel 0 = relu(x + 10) = x + 10 on the clipped range
        encoder_conv.weight[0, 0, 1, 1, 1] = 1.0
        encoder_conv.bias[0] = 10.0
        # decoder conv: input = [upsampled deep features (all zero), skip], so skip channel 0 is
        # input channel FEATURES. Pairs of ramps relu(k(s - 10 - a)) and relu(k(s - 10 - a) - 1).
        for j, a in enumerate(STEPS):
            for m, shift in enumerate((0.0, -1.0)):
                decoder_conv.weight[2 * j + m, FEATURES, 1, 1, 1] = GAIN
                decoder_conv.bias[2 * j + m] = -GAIN * (10.0 + a) + shift
        seg_layer.bias.fill_(-10.0)
        seg_layer.bias[0] = 0.5

        def add_step(cls: int, step: int, sign: float) -> None:
            seg_layer.weight[cls, 2 * step, 0, 0, 0] += sign
            seg_layer.weight[cls, 2 * step + 1, 0, 0, 0] -= sign

        for cls in (ids[LUNG], ids[LIVER], ids[BONE]):
            seg_layer.bias[cls] = 0.0
        add_step(ids[LUNG], 0, 1.0), add_step(ids[LUNG], 1, -1.0)
        add_step(ids[LIVER], 2, 1.0), add_step(ids[LIVER], 3, -1.0)
        add_step(ids[BONE], 3, 1.0)
    return net.state_dict()


def organ_of(hu: float) -> int:
    """Our organ id (amdiff.contracts) for the structure the network gives a voxel of this HU."""
    x = hu / 100.0
    if STEPS[0] < x < STEPS[1]:
        return ORGAN_LABELS["lung"]
    if STEPS[2] < x < STEPS[3]:
        return ORGAN_LABELS["liver"]
    return ORGAN_LABELS["bone"] if x > STEPS[3] else 0


def install(home: Path, task_ids) -> None:
    """Write the constructed model of each TotalSegmentator task id under home/nnunet/results."""
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    names = class_map["total"]
    ids = {name: i for i, name in names.items()}
    n_classes = max(names) + 1
    labels = {"background": 0, **{names[i]: i for i in sorted(names)}}
    for task_id in task_ids:
        info = TASK_ID_WEIGHTS_CONFIGS[task_id]
        spacing = 6.0 if "6mm" in info["foldername"] else 3.0 if "3mm" in info["foldername"] else 1.5
        folder = home / "nnunet" / "results" / info["foldername"] / TRAINER_FOLDER
        (folder / "fold_0").mkdir(parents=True)
        (folder / "plans.json").write_text(json.dumps(_plans(info["foldername"], spacing)))
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}))
        torch.save({"network_weights": _network_weights(n_classes, ids), "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": "3d_fullres"},
                    "inference_allowed_mirroring_axes": None},
                   folder / "fold_0" / "checkpoint_final.pth")
