# The built-in mock of CosmoGridV1: lognormal kappa maps from pyccl spectra with Poisson-sampled
# NFW halos painted on them (mock.halos), written in the release's own layout so that `ingest`
# reads mock and real data through the same code.


rule simulate_mock:
    output:
        # Only the index is declared: Snakemake deletes declared outputs before a rerun, and the
        # maps beside it must survive, so an interrupted simulation resumes where it stopped.
        # The index is written last and lists every map.
        metainfo=MOCK_ROOT / "CosmoGridV1_metainfo.h5",
    params:
        config=config_json("mock"),
        root=MOCK_ROOT,
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        layout.log(RESULTS, "simulate_mock"),
    benchmark:
        layout.benchmark(RESULTS, "simulate_mock"),
    conda:
        "../envs/data.yaml"
    shell:
        "python -m cosmo_sop simulate-mock --root {params.root:q} --config-json {params.config:q}"
        " --workers {threads} 2>&1 | tee {log:q}"


rule plot_mock_overview:
    input:
        metainfo=rules.simulate_mock.output.metainfo,
    output:
        report(
            layout.figures(RESULTS) / layout.MOCK_FIGURE,
            caption="../report/mock_overview.rst",
            category="Data",
        ),
    params:
        config=config_json("mock"),
        root=MOCK_ROOT,
    log:
        layout.log(RESULTS, "plot_mock_overview"),
    benchmark:
        layout.benchmark(RESULTS, "plot_mock_overview"),
    conda:
        "../envs/data.yaml"
    shell:
        "python -m cosmo_sop plot-mock --root {params.root:q} --config-json {params.config:q}"
        " --output {output:q} 2>&1 | tee {log:q}"


rule plot_mock_halos:
    # The halo mock against the lognormal-only one on a fixed diagnostic run (cosmo_sop/sources/
    # mock/diagnostics.py), drawn whether or not the demo's mock has halos.
    output:
        figures=[
            report(
                layout.figures(RESULTS) / name,
                caption="../report/mock_halos.rst",
                category="Data",
            )
            for name in layout.HALO_FIGURES.values()
        ],
        numbers=layout.figures(RESULTS) / layout.HALO_DIAGNOSTICS,
    params:
        config=config_json("mock"),
        out_dir=layout.figures(RESULTS),
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        layout.log(RESULTS, "plot_mock_halos"),
    benchmark:
        layout.benchmark(RESULTS, "plot_mock_halos"),
    conda:
        "../envs/data.yaml"
    shell:
        "python -m cosmo_sop plot-halos --output-dir {params.out_dir:q}"
        " --config-json {params.config:q} 2>&1 | tee {log:q}"
