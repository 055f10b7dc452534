"""Vendored by lipt-export into a Triton BLS model: only the tiling modules (lipt_export.runtime.tiling and
what it imports), copied verbatim from the package that wrote this repository."""
