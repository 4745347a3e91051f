// A deterministic mutation fuzzer for LLVMFuzzerTestOneInput, for compilers
// without libFuzzer (g++). Seeds: the corpus files plus valid verifier models
// built in memory (tests/fixture.h; too big to commit). Each run applies 1-4
// mutations: byte flips and sets, truncation, insertion, deletion, chunk
// copies, JSON-token splices in the header, and (half the time) a header
// length fixed up to match, so the parser gets past the first check. The
// seeds carry a "sha256" of their data section, so a mutated weight is
// refused by the checksum (the mismatch path); half the time the stored
// checksum is then fixed up too, so the checks behind it (non-finite values,
// shapes) stay reachable. One seed has no checksum (a file written before
// checksums).
//   deepid2_fuzz_model_reader [--seconds 60] [--seed 1] [--corpus DIR]...
//   deepid2_fuzz_model_reader --write-seeds DIR   (valid models, for libFuzzer)
// On a sanitizer error the input is written to fuzz-crash.bin first.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "../src/infer/sha256.h"
#include "fixture.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern long deepid2_fuzz_loaded;

// The death callback exists only in a sanitized build (the libFuzzer build's
// seed writer is not sanitized).
#if defined(__SANITIZE_ADDRESS__)
#define DEEPID2_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DEEPID2_ASAN 1
#endif
#endif
#if defined(DEEPID2_ASAN) && defined(__has_include)
#if __has_include(<sanitizer/common_interface_defs.h>)
#include <sanitizer/common_interface_defs.h>
#define HAVE_SANITIZER_CALLBACK 1
#endif
#endif

namespace {

std::vector<uint8_t> current;  // the input under test, for the crash dump

void dump_current() {
    if (FILE* f = std::fopen("fuzz-crash.bin", "wb")) {
        std::fwrite(current.data(), 1, current.size(), f);
        std::fclose(f);
        std::fprintf(stderr, "input written to fuzz-crash.bin (%zu bytes)\n", current.size());
    }
}

std::vector<std::vector<uint8_t>> builtin_seeds() {
    std::vector<std::vector<uint8_t>> seeds;
    fixture::Spec s;
    seeds.push_back(fixture::verifier_bytes(s));
    s.patches = 2, s.grid_rows = 2, s.grid_cols = 2, s.projected = 3, s.seed = 2;
    seeds.push_back(fixture::verifier_bytes(s));
    fixture::Spec mixed = fixture::Spec::mixed();  // format 2
    mixed.projected = 3;
    seeds.push_back(fixture::verifier_bytes(mixed));
    seeds.push_back(fixture::verifier_bytes(fixture::Spec{}, false));  // no checksum
    return seeds;
}

uint64_t header_length(const std::vector<uint8_t>& b) {
    uint64_t n = 0;
    for (int k = 7; k >= 0 && b.size() >= 8; --k) n = (n << 8) | b[size_t(k)];
    return n;
}

void set_header_length(std::vector<uint8_t>& b, uint64_t n) {
    for (int k = 0; k < 8 && size_t(k) < b.size(); ++k) b[size_t(k)] = uint8_t(n >> (8 * k));
}

const char* const kTokens[] = {
    "[", "]", "{", "}", ",", ":", "\"", "null", "true", "0", "-1", "1.5", "1e999", "2147483648",
    "18446744073709551616", "9223372036854775807", "\"F64\"", "\"I32\"", "\"U8\"", "[]", "{}",
    "\\u0000", "\\ud800", "\"__metadata__\"", "\"data_offsets\"", "\"shape\"", "[0,0]",
    "\"conv3_region\"", "[1,1]", "[0,1]", "\"deepid2-verifier/1\"", "\"patch1/conv1.w\"",
    "\"deepid2-verifier/2\"", "\"nets\"", "\"net\""};

// Rewrites the 64 hex digits after "sha256":" in the header (if any) to the
// SHA-256 of the bytes after the header, as the mutated input stands.
void fix_checksum(std::vector<uint8_t>& b) {
    const uint64_t n = header_length(b);
    if (b.size() < 8 || n > b.size() - 8) return;
    const std::string key = "\"sha256\":\"";
    const auto end = b.begin() + long(8 + n);
    const auto at = std::search(b.begin() + 8, end, key.begin(), key.end());
    if (at == end || end - at < long(key.size() + 64)) return;
    const std::string sum = deepid2::sha256_hex(b.data() + 8 + n, size_t(b.size() - 8 - n));
    std::copy(sum.begin(), sum.end(), at + long(key.size()));
}

void mutate(std::vector<uint8_t>& b, std::mt19937_64& g) {
    const uint64_t hdr = std::min<uint64_t>(header_length(b), b.size() > 8 ? b.size() - 8 : 0);
    auto pick = [&](size_t n) { return n ? size_t(g() % n) : 0; };
    // positions in the header are far more interesting than in the weights
    auto where = [&] { return (g() % 4 && hdr) ? 8 + pick(size_t(hdr)) : pick(b.size()); };
    switch (g() % 8) {
        case 0: if (!b.empty()) b[where()] ^= uint8_t(1u << (g() % 8)); break;
        case 1: if (!b.empty()) b[where()] = uint8_t(g()); break;
        case 2: b.resize(pick(b.size() + 1)); break;
        case 3: b.insert(b.begin() + long(std::min(where(), b.size())), uint8_t(g())); break;
        case 4: if (!b.empty()) { const size_t at = where(); b.erase(b.begin() + long(at), b.begin() + long(std::min(b.size(), at + 1 + pick(16)))); } break;
        case 5: {  // copy a chunk over another place
            if (b.size() < 2) break;
            const size_t from = pick(b.size()), to = where(), len = 1 + pick(32);
            for (size_t k = 0; k < len && from + k < b.size() && to + k < b.size(); ++k) b[to + k] = b[from + k];
            break;
        }
        case 6: case 7: {  // splice a JSON token into the header
            const std::string t = kTokens[pick(sizeof kTokens / sizeof *kTokens)];
            const size_t at = where(), cut = pick(8);
            if (at > b.size()) break;
            b.erase(b.begin() + long(at), b.begin() + long(std::min(b.size(), at + cut)));
            b.insert(b.begin() + long(at), t.begin(), t.end());
            if (b.size() >= 8 && g() % 2) set_header_length(b, hdr + t.size() - std::min(cut, size_t(hdr)));
            break;
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    double seconds = 60;
    uint64_t seed = 1;
    std::vector<std::vector<uint8_t>> seeds;
    bool builtin = true;
    auto read_seed = [&](const std::filesystem::path& p) {
        std::ifstream f(p, std::ios::binary);
        seeds.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    };
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--no-builtin-seeds") {  // the built-in seeds are verifier files
            builtin = false;
            continue;
        }
        if (a == "--seed-file" && i + 1 < argc) {
            read_seed(argv[++i]);
            continue;
        }
        if (a == "--seconds" && i + 1 < argc) seconds = std::atof(argv[++i]);
        else if (a == "--seed" && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
        else if (a == "--write-seeds" && i + 1 < argc) {
            seeds = builtin_seeds();
            const std::string dir = argv[++i];
            std::filesystem::create_directories(dir);
            for (size_t k = 0; k < seeds.size(); ++k)
                fixture::write_file(dir + "/valid" + std::to_string(k) + ".safetensors",
                                    seeds[k].data(), seeds[k].size());
            return 0;
        } else if (a == "--corpus" && i + 1 < argc) {
            for (const auto& e : std::filesystem::directory_iterator(argv[++i])) read_seed(e.path());
        } else {
            std::fprintf(stderr, "usage: %s [--seconds S] [--seed N] [--corpus DIR]... "
                         "[--seed-file F]... [--no-builtin-seeds] | --write-seeds DIR\n", argv[0]);
            return 2;
        }
    }
    if (builtin) {
        std::vector<std::vector<uint8_t>> b = builtin_seeds();
        seeds.insert(seeds.begin(), b.begin(), b.end());
    }
    if (seeds.empty()) {  // a patterned block: raw bytes for targets that take any
        seeds.emplace_back(4096);
        for (size_t k = 0; k < seeds[0].size(); ++k) seeds[0][k] = uint8_t(k * 131 + (k >> 7));
    }
#ifdef HAVE_SANITIZER_CALLBACK
    __sanitizer_set_death_callback(dump_current);
#endif
    std::mt19937_64 g(seed);
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    uint64_t execs = 0;
    for (const auto& s : seeds) {  // every seed unmutated first
        current = s;
        LLVMFuzzerTestOneInput(current.data(), current.size());
        ++execs;
    }
    while (elapsed() < seconds) {
        current = seeds[g() % seeds.size()];
        const int n = 1 + int(g() % 4);
        for (int k = 0; k < n; ++k) mutate(current, g);
        if (g() % 2) fix_checksum(current);
        LLVMFuzzerTestOneInput(current.data(), current.size());
        ++execs;
    }
    std::printf("mutation fuzzer: %llu executions in %.1f s (%zu seeds, seed %llu), %ld got "
                "past the checks to the work behind them, no crash\n",
                (unsigned long long)execs, elapsed(), seeds.size(), (unsigned long long)seed,
                deepid2_fuzz_loaded);
    return 0;
}
