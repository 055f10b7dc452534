// The manifest reader: a port of lipt_export/manifest.py (read_manifest, Manifest.from_dict, IOContract.from_dict,
// ArtifactEntry.from_dict, Manifest._checked) with the same rules and messages. Where a message quotes a value it
// quotes it as Python's repr would ('x', None, True), so both readers say the same thing about the same file.
#include "liptexport/export.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

namespace liptexport {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

Error manifest_error(const std::string& message) { return Error(Error::Kind::Manifest, message); }

// Python's repr of a JSON value, for messages.
std::string repr(const json& v) {
    if (v.is_null()) return "None";
    if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
    if (v.is_string()) {
        const auto& s = v.get_ref<const std::string&>();
        const char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
        return q + s + q;
    }
    return v.dump();
}

// Python truthiness of a JSON value (`d.get("golden") or {}`, `bool(tiling.get("required"))`).
bool truthy(const json& v) {
    if (v.is_null()) return false;
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_number_integer()) return v.get<std::int64_t>() != 0;
    if (v.is_number()) return v.get<double>() != 0.0;
    if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
    return true;
}

std::string display(const fs::path& p) { return p.string(); }

enum class Kind { Int, Str, Mapping, List };

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::Int: return "int";
        case Kind::Str: return "str";
        case Kind::Mapping: return "Mapping";
        case Kind::List: return "list";
    }
    return "?";
}

bool is_kind(const json& v, Kind k) {
    switch (k) {
        case Kind::Int: return v.is_number_integer();  // a JSON bool is not an int here (Python excludes bool)
        case Kind::Str: return v.is_string();
        case Kind::Mapping: return v.is_object();
        case Kind::List: return v.is_array();
    }
    return false;
}

// _need: the key must be there and of that type, else the file was edited or truncated.
const json& need(const json& d, const std::string& key, Kind kind, const std::string& where) {
    if (!d.is_object() || !d.contains(key))
        throw manifest_error(where + " has no '" + key + "' (edited or truncated); re-export");
    const json& v = d.at(key);
    if (!is_kind(v, kind))
        throw manifest_error(where + ": '" + key + "' is " + repr(v) + ", not " + kind_name(kind) + " (edited); re-export");
    return v;
}

int as_int(const json& v, const std::string& what) {
    const auto big = v.is_number_unsigned() ? static_cast<long double>(v.get<std::uint64_t>())
                                            : static_cast<long double>(v.get<std::int64_t>());
    if (big > 1e9L || big < -1e9L) throw manifest_error(what + " " + v.dump() + " is out of range (edited); re-export");
    return static_cast<int>(v.get<std::int64_t>());
}

// The size and tiling numbers every consumer computes with: integers, >= `least` (a 0 tile or a negative overlap
// would make tiling loop or fail far from the cause), defaulting as the Python reader does when absent.
int size_field(const json& block, const char* block_name, const char* key, int fallback, int least,
               const std::string& where) {
    if (!block.contains(key)) return fallback;
    const json& v = block.at(key);
    if (!v.is_number_integer() || as_int(v, where) < least)
        throw manifest_error(where + ": " + block_name + "." + key + " is " + repr(v) + ", not an integer >= " +
                             std::to_string(least) + " (edited); re-export");
    return as_int(v, where);
}

const json& optional_mapping(const json& d, const char* key, const std::string& where) {
    static const json empty = json::object();
    if (!d.contains(key) || !truthy(d.at(key))) return empty;
    return need(d, key, Kind::Mapping, where);
}

IOContract io_from_json(const json& d, const std::string& where) {
    IOContract io;
    io.scale = as_int(need(d, "scale", Kind::Int, where), where);
    if (io.scale < 1) throw manifest_error(where + ": scale " + std::to_string(io.scale) + " must be >= 1 (edited); re-export");
    const json& size = optional_mapping(d, "size", where);
    const json& tiling = optional_mapping(d, "tiling", where);
    io.multiple_of = size_field(size, "size", "multiple_of", 1, 1, where);
    io.min_size = size_field(size, "size", "min", 1, 1, where);
    io.recommended_tile = size_field(tiling, "tiling", "recommended_tile", 256, 1, where);
    io.tile_overlap = size_field(tiling, "tiling", "overlap", 16, 0, where);
    io.tile_required = tiling.contains("required") && truthy(tiling.at("required"));
    io.default_tile = size_field(tiling, "tiling", "default_tile", 512, 1, where);
    auto name_of = [&](const char* key) {
        const json& block = need(d, key, Kind::Mapping, where);
        if (!block.contains("name")) throw std::out_of_range("KeyError: 'name'");  // "malformed" below, as Python says
        const json& name = block.at("name");
        return name.is_string() ? name.get<std::string>() : name.dump();
    };
    io.input_name = name_of("input");
    io.output_name = name_of("output");
    return io;
}

ModelInfo model_from_json(const json& d, const std::string& where) {
    ModelInfo m;
    m.name = need(d, "name", Kind::Str, where).get<std::string>();
    m.scale = as_int(need(d, "scale", Kind::Int, where), where);
    const json variant = d.contains("variant") ? d.at("variant") : json(nullptr);
    m.variant = variant.is_string() ? variant.get<std::string>() : repr(variant);  // str(d.get("variant"))
    return m;
}

ArtifactEntry entry_from_json(const json& d, std::string where) {
    ArtifactEntry e;
    e.path = need(d, "path", Kind::Str, where).get<std::string>();
    where += " '" + e.path + "'";
    e.format = need(d, "format", Kind::Str, where).get<std::string>();
    if (e.format != "onnx" && e.format != "tensorrt")
        throw manifest_error(where + ": unknown format '" + e.format + "' (known: onnx, tensorrt)");
    e.precision = need(d, "precision", Kind::Str, where).get<std::string>();
    e.sha256 = need(d, "sha256", Kind::Str, where).get<std::string>();
    const json& bytes = need(d, "bytes", Kind::Int, where);
    e.bytes = bytes.is_number_unsigned() ? static_cast<std::int64_t>(bytes.get<std::uint64_t>()) : bytes.get<std::int64_t>();
    e.details = json::object();
    for (const auto& [key, value] : d.items())
        if (key != "path" && key != "format" && key != "precision" && key != "sha256" && key != "bytes")
            e.details[key] = value;
    return e;
}

// Is `inner` strictly below `outer`, component by component (pathlib's `outer in inner.parents`)?
bool strictly_inside(const fs::path& inner, const fs::path& outer) {
    auto i = inner.begin();
    for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
        if (o->empty() && std::next(o) == outer.end()) break;  // a trailing separator
        if (i == inner.end() || *i != *o) return false;
    }
    return i != inner.end() && !(i->empty() && std::next(i) == inner.end());
}

}  // namespace

std::string sha256_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(Error::Kind::Artifact, display(path) + ": cannot be read");
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("OpenSSL: cannot initialise sha256");
    std::vector<char> buf(1 << 20);
    while (in) {
        in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
        if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
    }
    if (in.bad()) throw Error(Error::Kind::Artifact, display(path) + ": read error while hashing");
    std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx.get(), md.data(), &n);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int k = 0; k < n; ++k) {
        out += hex[md[k] >> 4];
        out += hex[md[k] & 15];
    }
    return out;
}

Export Export::from_json(const json& d, const std::string& origin, std::optional<fs::path> root,
                         bool require_artifacts) {
    if (!d.is_object() || !d.contains("schema") || d.at("schema") != SCHEMA) {
        const std::string got = d.is_object() ? (d.contains("schema") ? repr(d.at("schema")) : "None")
                                              : "'" + std::string(d.type_name()) + "'";
        throw manifest_error(origin + " is not a lipt-export manifest (schema=" + got + ")");
    }
    const json version = d.contains("schema_version") ? d.at("schema_version") : json(nullptr);
    if (!(version.is_number() && version.get<double>() == SCHEMA_VERSION))
        throw manifest_error(origin + " has schema_version " + repr(version) + "; this lipt-upscale-cpp reads version " +
                             std::to_string(SCHEMA_VERSION) + ": re-export with this version");
    Export e;
    e.raw_ = d;
    e.root_ = std::move(root);
    try {
        e.model_ = model_from_json(need(d, "model", Kind::Mapping, origin), origin + ": model");
        e.io_ = io_from_json(need(d, "io", Kind::Mapping, origin), origin + ": io");
        if (e.model_.scale != e.io_.scale)
            throw manifest_error(origin + ": model scale " + std::to_string(e.model_.scale) + " and io scale " +
                                 std::to_string(e.io_.scale) + " disagree (edited); re-export");
        json raw = json::array();
        if (require_artifacts) raw = need(d, "artifacts", Kind::List, origin);
        else if (d.contains("artifacts") && truthy(d.at("artifacts"))) raw = d.at("artifacts");
        if (!raw.is_array()) throw std::invalid_argument("TypeError: 'artifacts' is not a list");
        for (const auto& a : raw) e.artifacts_.push_back(entry_from_json(a, origin + ": artifact"));
    } catch (const Error&) {
        throw;
    } catch (const std::exception& exc) {  // KeyError/TypeError/ValueError in Python
        throw manifest_error(origin + " is malformed (" + exc.what() + "); re-export");
    }
    // Two files for one (format, precision): a consumer could not tell which one the export means.
    std::map<std::pair<std::string, std::string>, std::string> seen;
    for (const auto& a : e.artifacts_) {
        auto [it, fresh] = seen.emplace(std::make_pair(a.format, a.precision), a.path);
        if (!fresh)
            throw manifest_error(origin + " lists two " + a.precision + " " + a.format + " artifacts ('" + it->second +
                                 "' and '" + a.path + "'): a consumer cannot tell which to run; re-export");
    }
    if (d.contains("golden") && truthy(d.at("golden"))) {
        const json& g = d.at("golden");
        if (!(g.is_object() && g.contains("path") && g.at("path").is_string() && g.contains("sha256") &&
              g.at("sha256").is_string()))
            throw manifest_error(origin + ": 'golden' needs a path and a sha256; re-export");
    }
    if (d.contains("runtime_choice") && truthy(d.at("runtime_choice"))) {
        const json& c = d.at("runtime_choice");
        bool ok = c.is_object();
        if (ok)
            for (const auto& [k, v] : c.items()) ok = ok && v.is_object();
        if (!ok) throw manifest_error(origin + ": 'runtime_choice' must map precisions to records; re-export");
    }
    return e;
}

Export Export::open(const fs::path& target_in) {
    fs::path target = target_in.lexically_normal();
    if (target.filename().empty() && target.has_parent_path()) target = target.parent_path();  // "dir/" -> "dir"
    std::error_code ec;
    if (!fs::exists(target, ec))
        throw Error(Error::Kind::Artifact,
                    "no such export: " + display(target) + " (pass an export directory or its manifest.json)");
    const fs::path path = fs::is_directory(target, ec) ? target / MANIFEST_NAME : target;
    if (!fs::is_regular_file(path, ec))
        throw manifest_error("no manifest at " + display(path) + " (pass an export directory or its manifest.json)");
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    json doc;
    try {
        doc = json::parse(text.str());
    } catch (const json::parse_error& exc) {
        std::string why = exc.what();
        if (auto p = why.find("] "); why.rfind("[json.exception", 0) == 0 && p != std::string::npos) why = why.substr(p + 2);
        throw manifest_error(display(path) + " is not valid JSON (" + why + "); re-export");
    }
    fs::path root = path.parent_path();
    if (root.empty()) root = ".";
    return from_json(doc, display(path), root);
}

const fs::path& Export::root() const {
    if (!root_) throw manifest_error("this manifest was not read from an export directory");
    return *root_;
}

std::vector<const ArtifactEntry*> Export::select(const std::string& format, const std::string& precision) const {
    std::vector<const ArtifactEntry*> out;
    for (const auto& a : artifacts_)
        if ((format.empty() || a.format == format) && (precision.empty() || a.precision == precision)) out.push_back(&a);
    return out;
}

const ArtifactEntry& Export::onnx_entry(const std::string& precision_in) const {
    const std::string precision = precision_in.empty() ? "fp32" : precision_in;
    auto found = select("onnx", precision);
    if (!found.empty()) return *found.front();
    std::set<std::string> have;
    for (const auto* a : select("onnx")) have.insert(a->precision);
    std::string list;
    for (const auto& p : have) list += (list.empty() ? "" : ", ") + p;
    throw Error(Error::Kind::Artifact, display(root()) + " has no " + precision +
                                           " ONNX artifact; available precisions: " + (list.empty() ? "none" : list));
}

fs::path Export::artifact_path(const ArtifactEntry& entry, bool verify) const {
    if (!root_) throw manifest_error(entry.path + ": this manifest was not read from an export directory");
    std::error_code ec;
    const fs::path root = fs::weakly_canonical(fs::absolute(*root_), ec);
    const fs::path rel(entry.path);
    // symlinks resolved as pathlib's resolve() does: a link inside pointing outside is outside
    const fs::path target = fs::weakly_canonical(root / rel, ec);
    if (rel.is_absolute() || ec || !strictly_inside(target, root))
        throw manifest_error(display(manifest_path()) + ": path '" + entry.path +
                             "' points outside the export directory; re-export instead of editing the manifest");
    const fs::path shown = *root_ / rel;
    if (!fs::is_regular_file(target, ec))
        throw manifest_error(display(shown) +
                             " is listed in the manifest but missing; re-export or copy the whole export directory");
    if (verify && sha256_file(target) != entry.sha256)
        throw manifest_error(display(shown) +
                             " does not match its manifest entry (sha256 differs): the file was changed after export; "
                             "re-export it");
    return shown;
}

}  // namespace liptexport
