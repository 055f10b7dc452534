// The only translation unit that includes OpenVINO (its headers are large; keep rebuilds of the rest cheap).
#include "liptexport/openvino_runner.hpp"

#include <openvino/openvino.hpp>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace liptexport {

int default_threads() {
    if (const char* env = std::getenv("LIPT_EXPORT_THREADS"); env && *env) {
        char* end = nullptr;
        const long v = std::strtol(env, &end, 10);
        if (*end != '\0' || v < 0)
            throw Error(Error::Kind::Usage, std::string("LIPT_EXPORT_THREADS is '") + env + "', not a number of threads");
        if (v > 0) return static_cast<int>(v);
    }
    const unsigned cores = std::thread::hardware_concurrency();
    return static_cast<int>(std::min(cores ? cores : 1u, 8u));
}

struct OpenVinoRunner::Impl {
    ov::Core core;
    std::shared_ptr<ov::Model> model;
    ov::CompiledModel compiled;
    ov::InferRequest request;
    ov::element::Type input_type;
    std::string inference_precision, runtime;
    int threads = 1;
};

OpenVinoRunner::OpenVinoRunner(const std::filesystem::path& onnx_path, const std::string& inference_precision,
                               int threads)
    : impl_(std::make_unique<Impl>()) {
    if (inference_precision != "f32" && inference_precision != "bf16")
        throw Error(Error::Kind::Usage,
                    "OpenVINO inference precision must be f32 or bf16, not '" + inference_precision + "'");
    auto& m = *impl_;
    m.threads = threads > 0 ? threads : default_threads();
    try {
        m.model = m.core.read_model(onnx_path.string());
        const ov::element::Type asked = inference_precision == "bf16" ? ov::element::bf16 : ov::element::f32;
        m.compiled = m.core.compile_model(m.model, "CPU", ov::hint::inference_precision(asked),
                                          ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                                          ov::inference_num_threads(m.threads));
    } catch (const ov::Exception& exc) {
        std::string why = exc.what();
        why = why.substr(0, why.find('\n'));
        throw Error(Error::Kind::Artifact, "OpenVINO cannot compile " + onnx_path.string() + " (" + why +
                                               "); re-export it or check the openvino version");
    }
    m.request = m.compiled.create_infer_request();
    // what OpenVINO compiled for: a CPU without bf16 runs f32 whatever was asked
    m.inference_precision = m.compiled.get_property(ov::hint::inference_precision).to_string();
    m.input_type = m.model->inputs().at(0).get_element_type();
    m.runtime = "openvino-" + m.inference_precision +
                (m.inference_precision == inference_precision ? "" : "(asked " + inference_precision + ")");
}

OpenVinoRunner::~OpenVinoRunner() = default;
OpenVinoRunner::OpenVinoRunner(OpenVinoRunner&&) noexcept = default;
OpenVinoRunner& OpenVinoRunner::operator=(OpenVinoRunner&&) noexcept = default;

const std::string& OpenVinoRunner::runtime() const { return impl_->runtime; }
const std::string& OpenVinoRunner::inference_precision() const { return impl_->inference_precision; }
int OpenVinoRunner::threads() const { return impl_->threads; }

Planes OpenVinoRunner::infer(const Planes& lr) {
    auto& m = *impl_;
    const ov::Shape shape{1, static_cast<size_t>(lr.c), static_cast<size_t>(lr.h), static_cast<size_t>(lr.w)};
    ov::Tensor input;
    if (m.input_type == ov::element::f16) {  // models exported with --fp16-io
        input = ov::Tensor(ov::element::f16, shape);
        auto* dst = input.data<ov::float16>();
        for (size_t k = 0; k < lr.data.size(); ++k) dst[k] = ov::float16(lr.data[k]);
    } else {
        // wraps the caller's buffer: OpenVINO reads it during infer() only
        input = ov::Tensor(ov::element::f32, shape, const_cast<float*>(lr.data.data()));
    }
    m.request.set_input_tensor(0, input);
    m.request.infer();
    const ov::Tensor output = m.request.get_output_tensor(0);
    const ov::Shape os = output.get_shape();
    if (os.size() != 4 || os[0] != 1)
        throw Error(Error::Kind::Artifact, "the model returned an output of rank " + std::to_string(os.size()) +
                                               ", not NCHW with batch 1 (the export's I/O contract)");
    Planes out(static_cast<int>(os[1]), static_cast<int>(os[2]), static_cast<int>(os[3]));
    if (output.get_element_type() == ov::element::f16) {
        const auto* src = output.data<const ov::float16>();
        for (size_t k = 0; k < out.data.size(); ++k) out.data[k] = static_cast<float>(src[k]);
    } else if (output.get_element_type() == ov::element::f32) {
        std::copy_n(output.data<const float>(), out.data.size(), out.data.data());
    } else {
        throw Error(Error::Kind::Artifact,
                    "the model's output is " + output.get_element_type().get_type_name() + ", not float32 or float16");
    }
    return out;
}

std::optional<nlohmann::json> OpenVinoRunner::embedded_description() const {
    const auto& model = *impl_->model;
    if (!model.has_rt_info("framework", METADATA_KEY)) return std::nullopt;
    const auto text = model.get_rt_info<std::string>("framework", METADATA_KEY);
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error&) {
        throw Error(Error::Kind::Manifest, std::string("the ONNX file's ") + METADATA_KEY +
                                               " metadata is not valid JSON (edited); re-export");
    }
}

OpenVinoRunner open_onnx_runner(const Export& exp, const std::string& precision,
                                const std::string& inference_precision, int threads) {
    const ArtifactEntry& entry = exp.onnx_entry(precision);
    const auto path = exp.artifact_path(entry);
    OpenVinoRunner runner(path, inference_precision, threads);
    // an edited manifest cannot change what a file computes: the file's own description must agree
    if (auto desc = runner.embedded_description()) {
        const Export own = Export::from_json(*desc, path.string() + " metadata", std::nullopt, false);
        if (own.io().scale != exp.io().scale || own.model().name != exp.model().name)
            throw Error(Error::Kind::Manifest,
                        exp.manifest_path().string() + " says " + exp.model().name + " x" +
                            std::to_string(exp.io().scale) + " but " + entry.path + " was exported as " +
                            own.model().name + " x" + std::to_string(own.io().scale) +
                            ": the manifest was edited; re-export");
    }
    return runner;
}

}  // namespace liptexport
