from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/relax.smk"
include: "workflow/rules/static.smk"
include: "workflow/rules/collect.smk"


rule all:
    default_target: True
    input:
        final_outputs,


onstart:
    pool_if_needed()


onsuccess:
    stop_pool()


onerror:
    stop_pool()
