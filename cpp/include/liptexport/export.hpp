// liptexport::Export: an export directory opened from C++ exactly as lipt_export.manifest.read_manifest opens it.
//
// The manifest (docs/manifest.md, schema "lipt-export/manifest" version 1) is the contract between an export and
// whatever serves it. Export::open checks the schema, the version and every field a consumer relies on, with the
// same rules and one-line messages (problem and fix) as the Python reader; artifact_path() keeps every file inside
// the export directory and verifies its sha256 before anything uses it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace liptexport {

// Every problem a user can fix (Python's LiptExportError family): the message is one line naming the problem and
// the fix. The CLI prints it as "lipt-upscale-cpp: error: ..." and exits 2.
class Error : public std::runtime_error {
public:
    enum class Kind { Manifest, Artifact, Tiling, Image, Usage };
    Error(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
    Kind kind() const { return kind_; }

private:
    Kind kind_;
};

inline constexpr const char* SCHEMA = "lipt-export/manifest";
inline constexpr int SCHEMA_VERSION = 1;
inline constexpr const char* MANIFEST_NAME = "manifest.json";
inline constexpr const char* METADATA_KEY = "lipt_export.model";  // the description each ONNX file embeds

// Input/output of every artifact: float32 NCHW RGB in [0, 1] -> x scale, unclamped (IOContract in Python).
struct IOContract {
    int scale = 1;
    int multiple_of = 1;  // the graph pads to it internally; tile starts align to it
    int min_size = 1;     // smaller inputs are padded (symmetric) up to it and the output cropped
    int recommended_tile = 256;
    int tile_overlap = 16;
    bool tile_required = false;
    int default_tile = 512;  // io.tiling.default_tile (absent in exports made before issue 26: DEFAULT_TILE)
    std::string input_name = "lr";
    std::string output_name = "sr";
};

struct ModelInfo {
    std::string name;
    std::string variant;
    int scale = 1;
};

// One artifact file: where it is (relative to the export directory), what it is, its hash, and the stage details
// (for engines: runtime, tensorrt_version, compute_capabilities, profile, ...; docs/serving.md).
struct ArtifactEntry {
    std::string path;
    std::string format;  // onnx | tensorrt
    std::string precision;
    std::string sha256;
    std::int64_t bytes = 0;
    nlohmann::json details;  // every other field of the entry, as written
};

class Export {
public:
    // An export directory or its manifest.json -> a checked Export (read_manifest).
    static Export open(const std::filesystem::path& target);
    // A parsed manifest (Manifest.from_dict): `origin` names it in messages; `root` is the export directory (none
    // for the description an ONNX file embeds, which has no artifact list: require_artifacts = false).
    static Export from_json(const nlohmann::json& doc, const std::string& origin,
                            std::optional<std::filesystem::path> root, bool require_artifacts = true);

    const ModelInfo& model() const { return model_; }
    const IOContract& io() const { return io_; }
    const std::vector<ArtifactEntry>& artifacts() const { return artifacts_; }
    const nlohmann::json& raw() const { return raw_; }
    const std::filesystem::path& root() const;  // the directory as given (errors name files under it)
    std::filesystem::path manifest_path() const { return root() / MANIFEST_NAME; }

    // Entries of that format and precision ("" = any).
    std::vector<const ArtifactEntry*> select(const std::string& format = "", const std::string& precision = "") const;
    // The ONNX artifact of `precision` (loader.choose_entry with backend onnxruntime); one-line error when absent.
    const ArtifactEntry& onnx_entry(const std::string& precision) const;
    // The entry's file, checked: inside the export directory (symlinks resolved), present, and (verify) with the
    // sha256 the manifest records (Manifest.artifact_path).
    std::filesystem::path artifact_path(const ArtifactEntry& entry, bool verify = true) const;

private:
    ModelInfo model_;
    IOContract io_;
    std::vector<ArtifactEntry> artifacts_;
    nlohmann::json raw_;
    std::optional<std::filesystem::path> root_;
};

// Lower-case hex sha256 of a file's bytes (OpenSSL), as lipt_export.fileio.sha256_file.
std::string sha256_file(const std::filesystem::path& path);

}  // namespace liptexport
