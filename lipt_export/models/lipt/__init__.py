"""LIPT: the network (:mod:`.model`), its HRM re-param convs (:mod:`.hrm`), NVSM sparse attention
(:mod:`.nvsm`) and the calibrated demo weights (:mod:`.demo_init`); registers the ``lipt`` spec."""
from lipt_export.models.lipt.arch import describe_lipt, lipt_arch_notes, read_lipt_arch, read_lipt_yaml
from lipt_export.models.lipt.demo_init import init_lipt_for_tests
from lipt_export.models.lipt.model import (LIPT, RGB_RANGE, VARIANTS, LIPTConfig, build_lipt,
                                           count_parameters, lipt_config, remap_lipt_keys)
from lipt_export.models.registry import ModelSpec, catalog_facts, register

__all__ = ["LIPT", "LIPTConfig", "build_lipt", "count_parameters", "init_lipt_for_tests", "lipt_config"]

register(ModelSpec(
    **catalog_facts("lipt"),
    build=build_lipt,
    rgb_range=RGB_RANGE,
    description="LIPT: Latency-aware Image Processing Transformer (HRM re-param convs + NVSM sparse attention)",
    size_multiple=lambda variant: lipt_config(variant, 2).window,
    init_for_tests=init_lipt_for_tests,
    remap_checkpoint_keys=remap_lipt_keys,
    config_for=lipt_config,
    build_config=lambda config, scale: LIPT(config, scale),
    read_arch=read_lipt_arch,
    read_config_file=read_lipt_yaml,
    describe=describe_lipt,
    config_multiple=lambda config: config.window,
    arch_notes=lipt_arch_notes,
    extra={"window": {v: lipt_config(v, 2).window for v in VARIANTS}},
))
