// Recursive-descent JSON (RFC 8259) with a depth limit, so a hostile header
// of nested brackets cannot exhaust the stack.
#include "json.h"

#include <charconv>

namespace deepid2 {
namespace json {

const Value* Value::find(const std::string& key) const {
    for (const auto& kv : object)
        if (kv.first == key) return &kv.second;
    return nullptr;
}

const char* type_name(Value::Type t) {
    switch (t) {
        case Value::Type::Null: return "null";
        case Value::Type::Bool: return "a boolean";
        case Value::Type::Number: return "a number";
        case Value::Type::String: return "a string";
        case Value::Type::Array: return "an array";
        case Value::Type::Object: return "an object";
    }
    return "?";
}

namespace {

class Parser {
public:
    Parser(const char* s, size_t n, int max_depth) : s_(s), n_(n), max_depth_(max_depth) {}

    Value document() {
        Value v = value(0);
        skip_ws();
        if (i_ != n_) fail("unexpected text after the JSON value");
        return v;
    }

private:
    const char* s_;
    size_t n_, i_ = 0;
    int max_depth_;

    [[noreturn]] void fail(const std::string& what) const {
        throw JsonError("JSON: " + what + " at byte " + std::to_string(i_));
    }
    void skip_ws() {
        while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }
    bool literal(const char* word) {
        size_t k = 0;
        while (word[k]) {
            if (i_ + k >= n_ || s_[i_ + k] != word[k]) return false;
            ++k;
        }
        i_ += k;
        return true;
    }

    Value value(int depth) {
        if (depth > max_depth_) fail("nesting deeper than " + std::to_string(max_depth_));
        skip_ws();
        if (i_ >= n_) fail("unexpected end");
        Value v;
        const char c = s_[i_];
        if (c == '{') {
            v.type = Value::Type::Object;
            object(v, depth);
        } else if (c == '[') {
            v.type = Value::Type::Array;
            array(v, depth);
        } else if (c == '"') {
            v.type = Value::Type::String;
            v.string = string();
        } else if (literal("true")) {
            v.type = Value::Type::Bool;
            v.boolean = true;
        } else if (literal("false")) {
            v.type = Value::Type::Bool;
        } else if (literal("null")) {
            v.type = Value::Type::Null;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            number(v);
        } else {
            fail(std::string("unexpected character '") + c + "'");
        }
        return v;
    }

    void object(Value& v, int depth) {
        ++i_;  // '{'
        skip_ws();
        if (i_ < n_ && s_[i_] == '}') { ++i_; return; }
        for (;;) {
            skip_ws();
            if (i_ >= n_ || s_[i_] != '"') fail("expected a string key");
            std::string key = string();
            if (v.find(key)) fail("duplicate key \"" + key + "\"");
            skip_ws();
            if (i_ >= n_ || s_[i_] != ':') fail("expected ':'");
            ++i_;
            Value member = value(depth + 1);
            v.object.emplace_back(std::move(key), std::move(member));
            skip_ws();
            if (i_ < n_ && s_[i_] == ',') { ++i_; continue; }
            if (i_ < n_ && s_[i_] == '}') { ++i_; return; }
            fail("expected ',' or '}'");
        }
    }

    void array(Value& v, int depth) {
        ++i_;  // '['
        skip_ws();
        if (i_ < n_ && s_[i_] == ']') { ++i_; return; }
        for (;;) {
            v.array.push_back(value(depth + 1));
            skip_ws();
            if (i_ < n_ && s_[i_] == ',') { ++i_; continue; }
            if (i_ < n_ && s_[i_] == ']') { ++i_; return; }
            fail("expected ',' or ']'");
        }
    }

    unsigned hex4() {
        if (n_ - i_ < 4) fail("truncated \\u escape");
        unsigned u = 0;
        for (int k = 0; k < 4; ++k) {
            const char h = s_[i_++];
            u <<= 4;
            if (h >= '0' && h <= '9') u |= unsigned(h - '0');
            else if (h >= 'a' && h <= 'f') u |= unsigned(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') u |= unsigned(h - 'A' + 10);
            else fail("bad hex digit in \\u escape");
        }
        return u;
    }

    static void put_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += char(cp);
        } else if (cp < 0x800) {
            out += char(0xC0 | (cp >> 6));
            out += char(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += char(0xE0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        } else {
            out += char(0xF0 | (cp >> 18));
            out += char(0x80 | ((cp >> 12) & 0x3F));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
        }
    }

    // One UTF-8 sequence starting at i_, validated (no overlongs, no surrogates).
    void utf8_char(std::string& out) {
        const unsigned char b0 = static_cast<unsigned char>(s_[i_]);
        int extra;
        unsigned cp, min;
        if (b0 >= 0xC2 && b0 <= 0xDF) { extra = 1; cp = b0 & 0x1F; min = 0x80; }
        else if (b0 >= 0xE0 && b0 <= 0xEF) { extra = 2; cp = b0 & 0x0F; min = 0x800; }
        else if (b0 >= 0xF0 && b0 <= 0xF4) { extra = 3; cp = b0 & 0x07; min = 0x10000; }
        else fail("invalid UTF-8");
        if (n_ - i_ <= size_t(extra)) fail("truncated UTF-8");
        for (int k = 1; k <= extra; ++k) {
            const unsigned char b = static_cast<unsigned char>(s_[i_ + k]);
            if ((b & 0xC0) != 0x80) fail("invalid UTF-8");
            cp = (cp << 6) | (b & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid UTF-8");
        out.append(s_ + i_, size_t(extra) + 1);
        i_ += size_t(extra) + 1;
    }

    std::string string() {
        ++i_;  // opening quote
        std::string out;
        for (;;) {
            if (i_ >= n_) fail("unterminated string");
            const unsigned char c = static_cast<unsigned char>(s_[i_]);
            if (c == '"') { ++i_; return out; }
            if (c < 0x20) fail("control character in string");
            if (c >= 0x80) { utf8_char(out); continue; }
            if (c != '\\') { out += char(c); ++i_; continue; }
            if (++i_ >= n_) fail("truncated escape");
            const char e = s_[i_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate");
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        if (n_ - i_ < 2 || s_[i_] != '\\' || s_[i_ + 1] != 'u') fail("lone high surrogate");
                        i_ += 2;
                        const unsigned lo = hex4();
                        if (lo < 0xDC00 || lo > 0xDFFF) fail("bad surrogate pair");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                    put_utf8(out, cp);
                    break;
                }
                default: fail(std::string("bad escape '\\") + e + "'");
            }
        }
    }

    void number(Value& v) {
        const size_t start = i_;
        bool integral = true;
        if (s_[i_] == '-') ++i_;
        if (i_ >= n_ || !(s_[i_] >= '0' && s_[i_] <= '9')) fail("bad number");
        if (s_[i_] == '0') ++i_;
        else while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
        if (i_ < n_ && s_[i_] == '.') {
            integral = false;
            ++i_;
            if (i_ >= n_ || !(s_[i_] >= '0' && s_[i_] <= '9')) fail("bad number");
            while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
        }
        if (i_ < n_ && (s_[i_] == 'e' || s_[i_] == 'E')) {
            integral = false;
            ++i_;
            if (i_ < n_ && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
            if (i_ >= n_ || !(s_[i_] >= '0' && s_[i_] <= '9')) fail("bad number");
            while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
        }
        v.type = Value::Type::Number;
        const char *b = s_ + start, *e = s_ + i_;
        if (std::from_chars(b, e, v.number).ec != std::errc()) v.number = 0;  // out of double range
        if (integral) {
            int64_t x = 0;
            const auto r = std::from_chars(b, e, x);
            v.is_integer = r.ec == std::errc() && r.ptr == e;
            v.integer = v.is_integer ? x : 0;
        }
    }
};

}  // namespace

Value parse(const char* text, size_t size, int max_depth) {
    if (!text && size) throw JsonError("JSON: null text");
    return Parser(text, size, max_depth).document();
}

}  // namespace json
}  // namespace deepid2
