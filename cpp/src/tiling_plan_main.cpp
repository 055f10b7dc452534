// lipt-tiling-plan LENGTH TILE OVERLAP ALIGN SCALE: one axis's arcs and weights as JSON, so the tests can compare
// the C++ port with lipt_export/runtime/tiling.py over many sizes without running a model. Not installed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include <nlohmann/json.hpp>

#include "liptexport/tiling.hpp"

int main(int argc, char** argv) {
    if (argc != 6) {
        std::cerr << "usage: lipt-tiling-plan LENGTH TILE OVERLAP ALIGN SCALE\n";
        return 2;
    }
    const long v[5] = {std::atol(argv[1]), std::atol(argv[2]), std::atol(argv[3]), std::atol(argv[4]), std::atol(argv[5])};
    nlohmann::json out;
    try {
        const auto arcs = liptexport::axis_arcs(v[0], v[1], v[2], v[3]);
        const auto weights = liptexport::axis_weights(arcs, static_cast<int>(v[4]));
        for (const auto& a : arcs) out["arcs"].push_back({a.start, a.size, a.length});
        for (const auto& w : weights) {
            nlohmann::json bits = nlohmann::json::array();  // float32 bit patterns: exact comparison
            for (float f : w) {
                std::uint32_t u;
                std::memcpy(&u, &f, 4);
                bits.push_back(u);
            }
            out["weights"].push_back(bits);
        }
    } catch (const liptexport::Error& exc) {
        out["error"] = exc.what();
    }
    std::cout << out.dump() << "\n";
    return 0;
}
