# Every target sets itself up: a venv in .venv with the constrained install (idempotent: redone
# only when pyproject.toml or constraints.txt change).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
OUT ?= exports

.PHONY: setup export test bench bench-triton clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## LIPT-small x4, FP32 + FP16 ONNX, simplified, validated on ONNX Runtime (CPU).
export: $(STAMP)
	$(BIN)/lipt-export --model lipt --variant small --scale 4 --fp16 --out $(OUT) --overwrite

## The Triton server tests need the server's own venv (numpy<2), the KServe manifest test the kserve SDK's
## (protobuf<7); set up here, idempotent. If one cannot be made, its tests skip and say why.
test: $(STAMP)
	$(BIN)/lipt-export serve --setup || echo "lipt-export: warning: no Triton server environment; its tests will skip"
	bash cpp/setup.sh $(BIN)/python || echo "lipt-export: warning: the C++ part did not build (cpp/build/UNAVAILABLE); its tests will skip"
	$(BIN)/python tests/helpers/kserve_env.py || echo "lipt-export: warning: no kserve SDK venv; the KServe manifest test will skip"
	$(BIN)/python -m pytest -q

## The C++ serving library and lipt-upscale-cpp (cpp/, docs/serving.md) into cpp/build; Debian packages installed if missing.
.PHONY: cpp
cpp: $(STAMP)
	bash cpp/setup.sh $(BIN)/python

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_lipt.py

bench-triton: $(STAMP)
	$(BIN)/lipt-export serve --setup
	$(BIN)/python benchmarks/bench_triton.py

clean:
	rm -rf $(OUT) .pytest_cache
