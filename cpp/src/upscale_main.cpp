// lipt-upscale-cpp EXPORT INPUT.png OUTPUT.png: `lipt-export upscale` of one PNG from C++ (OpenVINO, ONNX artifacts).
// Every problem a user can fix is one line "lipt-upscale-cpp: error: ..." on stderr and exit code 2, as the Python CLI.
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "liptexport/export.hpp"
#include "liptexport/openvino_runner.hpp"
#include "liptexport/png_image.hpp"
#include "liptexport/tiling.hpp"

namespace fs = std::filesystem;
using liptexport::Error;

namespace {

const char* USAGE =
    "usage: lipt-upscale-cpp EXPORT INPUT.png OUTPUT.png [options]\n"
    "       lipt-upscale-cpp EXPORT --check [--precision P]\n"
    "\n"
    "Upscale one PNG with an export's ONNX artifact on OpenVINO (CPU), tiled as `lipt-export upscale` tiles it.\n"
    "EXPORT: an export directory or its manifest.json (checked: schema, paths, sha256, the ONNX file's own\n"
    "description). Gray and 16-bit PNGs stay gray / 16-bit; alpha is upscaled bicubic.\n"
    "\n"
    "  --precision fp32|fp16|int8     which ONNX artifact (default fp32)\n"
    "  --tile N                       LR tile in pixels; 0 = whole image (default: the manifest's tile when the\n"
    "                                 model requires tiling, else 512; images up to the tile run whole)\n"
    "  --overlap N                    LR pixels shared by neighbouring tiles (default: the manifest's, at least\n"
    "                                 8 windows for windowed models)\n"
    "  --runtime-precision f32|bf16   OpenVINO inference precision (default f32; read back and printed)\n"
    "  --threads N                    OpenVINO threads (default $LIPT_EXPORT_THREADS, else all cores up to 8)\n"
    "  --check                        only open and check the export, print its I/O contract and tiling\n"
    "  --quiet, -q                    print nothing on success\n";

Error usage(const std::string& message) { return Error(Error::Kind::Usage, message); }

int parse_int(const std::string& option, const std::string& text) {
    try {
        size_t used = 0;
        const int v = std::stoi(text, &used);
        if (used == text.size()) return v;
    } catch (const std::exception&) {
    }
    throw usage("option " + option + ": '" + text + "' is not an integer");
}

struct Options {
    std::vector<std::string> positional;
    std::string precision = "fp32", runtime_precision = "f32";
    std::optional<int> tile, overlap;
    int threads = 0;
    bool check = false, quiet = false;
};

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i], value;
        const bool has_value = arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos;
        if (has_value) {
            value = arg.substr(arg.find('=') + 1);
            arg = arg.substr(0, arg.find('='));
        }
        auto next = [&]() -> std::string {
            if (has_value) return value;
            if (i + 1 >= argc) throw usage("option " + arg + " requires a value");
            return argv[++i];
        };
        if (arg == "--help" || arg == "-h") {
            std::cout << USAGE;
            std::exit(0);
        } else if (arg == "--precision") {
            o.precision = next();
            if (o.precision != "fp32" && o.precision != "fp16" && o.precision != "int8")
                throw usage("--precision '" + o.precision + "': choose one of fp32, fp16, int8");
        } else if (arg == "--runtime-precision") {
            o.runtime_precision = next();
            if (o.runtime_precision != "f32" && o.runtime_precision != "bf16")
                throw usage("--runtime-precision '" + o.runtime_precision + "': choose f32 or bf16");
        } else if (arg == "--tile") {
            o.tile = parse_int(arg, next());
        } else if (arg == "--overlap") {
            o.overlap = parse_int(arg, next());
        } else if (arg == "--threads") {
            o.threads = parse_int(arg, next());
            if (o.threads < 1) throw usage("--threads must be >= 1, got " + std::to_string(o.threads));
        } else if (arg == "--check") {
            o.check = true;
        } else if (arg == "--quiet" || arg == "-q") {
            o.quiet = true;
        } else if (arg.size() > 1 && arg[0] == '-') {
            throw usage("no such option: " + arg + " (see --help)");
        } else {
            o.positional.push_back(arg);
        }
    }
    const size_t want = o.check ? 1 : 3;
    if (o.positional.size() != want)
        throw usage(o.check ? "--check takes EXPORT only (see --help)"
                            : "expected EXPORT INPUT.png OUTPUT.png, got " + std::to_string(o.positional.size()) +
                                  " argument(s) (see --help)");
    return o;
}

std::string lower(std::string s) {
    for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
}

// upscale.plan_outputs for one file: input present, a PNG output that is not the input, its folder writable.
fs::path plan_output(const fs::path& input, fs::path output) {
    std::error_code ec;
    if (!fs::exists(input, ec)) throw Error(Error::Kind::Usage, "no such input: " + input.string());
    if (fs::is_directory(input, ec))
        throw Error(Error::Kind::Usage, "INPUT " + input.string() + " is a folder; lipt-upscale-cpp upscales one PNG "
                                        "(lipt-export upscale takes folders)");
    if (fs::is_directory(output, ec)) output /= input.filename();  // a file into an existing folder keeps its name
    if (lower(output.extension().string()) != ".png")
        throw Error(Error::Kind::Usage, "cannot write '" + output.filename().string() +
                                            "': lipt-upscale-cpp writes .png only (lipt-export upscale writes other formats)");
    std::error_code ec_in, ec_out;
    const auto in_real = fs::weakly_canonical(input, ec_in), out_real = fs::weakly_canonical(output, ec_out);
    if (!ec_in && !ec_out && in_real == out_real)
        throw Error(Error::Kind::Usage, output.string() + " would overwrite its input; choose another OUTPUT");
    return output;
}

void print_check(const liptexport::Export& exp, const liptexport::OpenVinoRunner& runner, const std::string& precision) {
    const auto& io = exp.io();
    const auto policy = liptexport::TilingPolicy::from_io(io);
    const auto& entry = exp.onnx_entry(precision);
    std::cout << "export: " << exp.root().string() << " (" << exp.model().name << "-" << exp.model().variant << "-x"
              << exp.model().scale << ", schema " << liptexport::SCHEMA << " v" << liptexport::SCHEMA_VERSION << ")\n"
              << "artifact: " << entry.path << " (" << entry.format << ", " << entry.precision
              << ", sha256 ok, "
              << (runner.embedded_description() ? "its embedded description agrees" : "no embedded description") << ") on " << runner.runtime() << ", " << runner.threads()
              << " threads\n"
              << "io: " << io.input_name << " float32 NCHW RGB [0, 1] -> " << io.output_name << " x" << io.scale
              << " (unclamped); min size " << io.min_size << " (smaller inputs padded), multiple_of " << io.multiple_of
              << "\n"
              << "tiling: recommended tile " << policy.recommended_tile << ", overlap " << policy.overlap
              << (policy.required ? ", required" : ", optional") << ", default tile " << policy.default_tile
              << "\n";
}

int run(const Options& o) {
    const auto t0 = std::chrono::steady_clock::now();
    fs::path input, output;
    if (!o.check) {
        input = o.positional[1];
        output = plan_output(input, o.positional[2]);
    }
    const auto exp = liptexport::Export::open(o.positional[0]);
    // the artifact is checked (sha256, embedded description) before the tile, in upscale's order
    auto runner = liptexport::open_onnx_runner(exp, o.precision, o.runtime_precision, o.threads);
    // bounded memory by default: images up to the model's default tile run whole (cli/upscale.py)
    const auto policy = liptexport::TilingPolicy::from_io(exp.io());
    const auto resolved = policy.resolve(o.tile, o.overlap, policy.default_tile);
    if (o.check) {
        print_check(exp, runner, o.precision);
        return 0;
    }
    const double opened = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto t1 = std::chrono::steady_clock::now();  // timed from here like upscale's "in N s"
    const auto img = liptexport::load_png(input);
    const int scale = exp.io().scale;
    liptexport::InferFn infer = [&runner](const liptexport::Planes& lr) { return runner.infer(lr); };
    const liptexport::TiledUpscaler upscaler(liptexport::pad_to_min(infer, scale, exp.io().min_size), scale,
                                             resolved.tile, resolved.overlap, exp.io().multiple_of);
    const auto out = upscaler.run(img.rgb());
    std::optional<std::vector<std::uint8_t>> alpha;
    if (img.alpha) alpha = liptexport::upscale_alpha_bicubic(*img.alpha, img.height, img.width, scale);
    if (output.has_parent_path()) fs::create_directories(output.parent_path());
    liptexport::save_png(output, out, img, alpha);
    if (!o.quiet) {
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
        const std::string how = upscaler.tile() ? "tile " + std::to_string(*upscaler.tile()) + " overlap " +
                                                      std::to_string(upscaler.overlap())
                                                : std::string("whole image");
        char took[64];
        std::snprintf(took, sizeof took, "%.2fs (export checked and compiled in %.2fs)", secs, opened);
        std::cout << "upscaled 1 image(s) x" << scale << " with " << exp.onnx_entry(o.precision).path << "@"
                  << runner.runtime() << " on cpu (" << how << ", " << upscaler.count_tiles(img.height, img.width)
                  << " tile(s), " << runner.threads() << " threads) -> " << output.string() << " in " << took << "\n";
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const Error& exc) {
        std::string message = exc.what();
        message = message.substr(0, message.find('\n'));  // one line, always
        std::cerr << "lipt-upscale-cpp: error: " << message << "\n";
        return 2;
    } catch (const fs::filesystem_error& exc) {
        std::cerr << "lipt-upscale-cpp: error: " << exc.path1().string() << ": " << exc.code().message() << "\n";
        return 2;
    } catch (const std::exception& exc) {  // a bug, not a user error: say so
        std::cerr << "lipt-upscale-cpp: internal error: " << exc.what() << "\n";
        return 1;
    }
}
