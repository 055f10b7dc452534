// An ONNX artifact compiled by OpenVINO's C++ API for the CPU at an explicit inference precision, as
// lipt_export/runtime/openvino.py does: the precision is never left to OpenVINO (its CPU default is bf16 on AMX
// CPUs, a numerically different artifact), and the precision it really compiled for is read back and named.
// OpenVINO's headers stay inside openvino_runner.cpp (pimpl): including this header costs nothing.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "liptexport/export.hpp"
#include "liptexport/tiling.hpp"

namespace liptexport {

// Intra-op threads: $LIPT_EXPORT_THREADS, else all cores up to 8 (runtime/base.py: default_threads).
int default_threads();

class OpenVinoRunner {
public:
    // inference_precision: "f32" or "bf16"; threads <= 0: default_threads().
    OpenVinoRunner(const std::filesystem::path& onnx_path, const std::string& inference_precision, int threads = 0);
    ~OpenVinoRunner();
    OpenVinoRunner(OpenVinoRunner&&) noexcept;
    OpenVinoRunner& operator=(OpenVinoRunner&&) noexcept;

    // One (3, h, w) float32 image in [0, 1] -> (3, s*h, s*w) float32, unclamped (float16 I/O converted).
    Planes infer(const Planes& lr);
    // "openvino-f32", or "openvino-f32(asked bf16)" where the CPU cannot run what was asked.
    const std::string& runtime() const;
    const std::string& inference_precision() const;  // read back from the compiled model: "f32" | "bf16"
    int threads() const;
    // The model description the ONNX file embeds (metadata_props "lipt_export.model", which OpenVINO's ONNX
    // frontend exposes as rt_info["framework"]["lipt_export.model"]); nullopt when the file carries none.
    std::optional<nlohmann::json> embedded_description() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// The ONNX artifact of `precision` from an export, checked as loader.checked_artifact does (inside the directory,
// sha256 as recorded, and its embedded description agreeing with the manifest's model name and scale), compiled
// for `inference_precision`.
OpenVinoRunner open_onnx_runner(const Export& exp, const std::string& precision,
                                const std::string& inference_precision, int threads = 0);

}  // namespace liptexport
