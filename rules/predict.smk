# Inference: every trained variant predicts every test subject at every count level of the
# sites it is evaluated on (training.train_sites), writing the denoised SUV image, the lesion
# mask and the organ label map on the input's grid. What a model writes differs (AMDiff: all
# three; a denoiser: the image; a segmenter: the masks, from the image and the Med-DDPM output),
# so each kind has its rule; the two baseline rules are predict_amdiff with other files.
# Every model predicts all test images of a subject in one job (one start of torch and one
# checkpoint read, 6-9 s on a CPU, instead of one per image): its output is the subject's
# folder, with a pXXX_rN folder per image. Each image keeps its own sampler seed.


rule predict_amdiff:
    input:
        config=f"{CONFIG_DIR}/inference.yaml",
        model=lambda w: f"{RESULTS}/models/{w.model}/{TRAINED_ON[w.site]}/best.pt",
        lc=lowcount_inputs,
    output:
        directory(f"{RESULTS}/predictions/{{model}}/{{site}}/{{subject}}"),
    log:
        "logs/predict/{model}/{site}/{subject}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{model}}/{{site}}/{{subject}}.tsv"
    wildcard_constraints:
        model=never(VARIANTS + [r for m in VARIANTS for r in REPLICATES.get(m, [])]),
        subject=TEST_SUBJECT_IDS,
    conda:
        "../envs/learning.yaml"
    threads: 1
    resources:
        **network_resources("predict", INFERENCE["device"], images=images_to_predict),
    params:
        # word lists: `:q` quotes each word
        images=lambda w: prediction_args(w, w.model),
    shell:
        "amdiff predict --config {input.config:q} --checkpoint {input.model:q} {params.images:q}"
        " --subject {wildcards.subject:q} --threads {threads} > {log:q} 2>&1"


use rule predict_amdiff as predict_denoiser_baseline with:
    wildcard_constraints:
        model=never(DENOISER_BASELINES + REPLICATES.get("med_ddpm", [])),
        subject=TEST_SUBJECT_IDS,


use rule predict_amdiff as predict_segmenter_baseline with:
    # Input: I_LC and the Med-DDPM output for the same image (paper Sec. 4.2).
    input:
        config=f"{CONFIG_DIR}/inference.yaml",
        model=lambda w: f"{RESULTS}/models/{w.model}/{TRAINED_ON[w.site]}/best.pt",
        lc=lowcount_inputs,
        denoised=lambda w: subject_predictions("med_ddpm", w.site, w.subject),
    wildcard_constraints:
        model=never(COMPARISON_SEGMENTERS),
        subject=TEST_SUBJECT_IDS,
    params:
        images=lambda w: prediction_args(w, w.model, denoised_by="med_ddpm"),


rule predict_gaussian_filter:
    # the training-free row: the low-count images smoothed by the FWHM fitted on validation images
    input:
        fit=lambda w: f"{RESULTS}/models/gaussian_filter/{TRAINED_ON[w.site]}/fit.json",
        lc=lowcount_inputs,
    output:
        directory(f"{RESULTS}/predictions/gaussian_filter/{{site}}/{{subject}}"),
    log:
        "logs/predict/gaussian_filter/{site}/{subject}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/gaussian_filter/{{site}}/{{subject}}.tsv"
    wildcard_constraints:
        subject=TEST_SUBJECT_IDS,
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        # word lists: `:q` quotes each word
        images=lambda w: prediction_args(w, "gaussian_filter", levels=False),
        fwhm=lambda w, input: ["--fit", input.fit],
    shell:
        "amdiff gaussian-filter {params.images:q} {params.fwhm:q} > {log:q} 2>&1"


use rule predict_gaussian_filter as predict_lowcount_input with:
    # the input itself as a "denoised" image: FWHM 0 writes its voxels unchanged
    input:
        lc=lowcount_inputs,
    output:
        directory(f"{RESULTS}/predictions/lowcount_input/{{site}}/{{subject}}"),
    log:
        "logs/predict/lowcount_input/{site}/{subject}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/lowcount_input/{{site}}/{{subject}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        images=lambda w: prediction_args(w, "lowcount_input", levels=False),
        fwhm=["--fwhm-mm", "0"],
