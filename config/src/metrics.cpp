#include "parley/config/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

namespace parley::metrics {

// ---------------------------------------------------------------------------------------------
// Formatting

void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  char buf[64];
  if (std::fabs(v) < 1e15 && v == std::trunc(v)) {
    auto r = std::to_chars(buf, buf + sizeof buf, static_cast<long long>(v));
    out.append(buf, r.ptr);
    return;
  }
  // Go's strconv.FormatFloat(v, 'g', -1, 64): shortest round-trip digits; exponent form when
  // the decimal exponent is < -4 or large (integers >= 1e15 end up here).
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  const char* e = std::find(buf, r.ptr, 'e');
  int exp = 0;
  if (e != r.ptr) {
    const char* p = e + 1;
    if (*p == '+') ++p;
    std::from_chars(p, r.ptr, exp);
  }
  if (exp < -4 || exp >= 15) {
    out.append(buf, r.ptr);
    return;
  }
  r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
  out.append(buf, r.ptr);
}

namespace {

void append_uint(std::string& out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

bool valid_metric_name(std::string_view n) {
  if (n.empty()) return false;
  for (std::size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

bool valid_label_name(std::string_view n) {
  if (n.empty()) return false;
  for (std::size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

const char* type_name(metric_type t) {
  switch (t) {
  case metric_type::counter: return "counter";
  case metric_type::gauge: return "gauge";
  case metric_type::histogram: return "histogram";
  }
  return "untyped";
}

void append_header(std::string& out, std::string_view name, std::string_view help,
                   metric_type type) {
  out += "# HELP ";
  out += name;
  out += ' ';
  append_help(out, help);
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type_name(type);
  out += '\n';
}

/// The lookup key of a label set: each value prefixed by its length, so no separator can
/// collide with value contents.
void append_key(std::string& key, std::string_view v) {
  auto n = static_cast<uint32_t>(v.size());
  char len[4] = {char(n & 0xff), char((n >> 8) & 0xff), char((n >> 16) & 0xff),
                 char((n >> 24) & 0xff)};
  key.append(len, 4);
  key.append(v.data(), v.size());
}

} // namespace

void append_label_value(std::string& out, std::string_view v) {
  for (char c : v) {
    switch (c) {
    case '\\': out += "\\\\"; break;
    case '"': out += "\\\""; break;
    case '\n': out += "\\n"; break;
    default: out += c;
    }
  }
}

void append_help(std::string& out, std::string_view v) {
  for (char c : v) {
    switch (c) {
    case '\\': out += "\\\\"; break;
    case '\n': out += "\\n"; break;
    default: out += c;
    }
  }
}

const std::vector<double>& default_latency_buckets() {
  static const std::vector<double> b{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                     0.05,   0.1,   0.25,   0.5,   1,    2.5,
                                     5,      10,    30,     60,    120};
  return b;
}

// ---------------------------------------------------------------------------------------------
// Cells

void gauge::add(double d) noexcept {
  uint64_t old = bits_.load(std::memory_order_relaxed);
  while (!bits_.compare_exchange_weak(old, to_bits(from_bits(old) + d),
                                      std::memory_order_relaxed, std::memory_order_relaxed)) {
  }
}

namespace {
uint64_t dbits(double v) noexcept {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}
double dval(uint64_t b) noexcept {
  double v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}
} // namespace

histogram::histogram(const std::vector<double>& bounds)
    : bounds_(&bounds), buckets_(new std::atomic<uint64_t>[bounds.size() + 1]) {
  for (std::size_t i = 0; i <= bounds.size(); ++i)
    buckets_[i].store(0, std::memory_order_relaxed);
}

void histogram::observe(double v) noexcept {
  const double* b = bounds_->data();
  const std::size_t n = bounds_->size();
  std::size_t i = n; // NaN: +Inf bucket only
  if (!std::isnan(v)) i = static_cast<std::size_t>(std::lower_bound(b, b + n, v) - b);
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  uint64_t old = sum_bits_.load(std::memory_order_relaxed);
  while (!sum_bits_.compare_exchange_weak(old, dbits(dval(old) + v), std::memory_order_relaxed,
                                          std::memory_order_relaxed)) {
  }
}

std::vector<uint64_t> histogram::cumulative_counts() const {
  std::vector<uint64_t> c(bounds_->size() + 1);
  uint64_t acc = 0;
  for (std::size_t i = 0; i < c.size(); ++i) {
    acc += buckets_[i].load(std::memory_order_relaxed);
    c[i] = acc;
  }
  return c;
}

uint64_t histogram::count() const noexcept {
  uint64_t acc = 0;
  for (std::size_t i = 0; i <= bounds_->size(); ++i)
    acc += buckets_[i].load(std::memory_order_relaxed);
  return acc;
}

double histogram::sum() const noexcept { return dval(sum_bits_.load(std::memory_order_relaxed)); }

// ---------------------------------------------------------------------------------------------
// Families

namespace detail {

struct child {
  std::string label_text; // l1="v1",l2="v2" (escaped), empty without labels
  std::unique_ptr<counter> c;
  std::unique_ptr<gauge> g;
  std::unique_ptr<histogram> h;
};

struct family_impl {
  std::string name;
  std::string help;
  metric_type type;
  std::vector<std::string> label_names;
  std::size_t max_children;
  std::vector<double> bounds;       // histograms
  std::vector<std::string> le_text; // bounds formatted, then "+Inf"

  mutable std::shared_mutex mu;
  std::unordered_map<std::string, child*> index;
  std::vector<std::unique_ptr<child>> children; // creation order
  std::size_t regular_children = 0;             // all but the overflow child
  child* overflow = nullptr;

  child* make_child(const std::string_view* values) {
    auto ch = std::make_unique<child>();
    for (std::size_t i = 0; i < label_names.size(); ++i) {
      if (i) ch->label_text += ',';
      ch->label_text += label_names[i];
      ch->label_text += "=\"";
      append_label_value(ch->label_text, values[i]);
      ch->label_text += '"';
    }
    switch (type) {
    case metric_type::counter: ch->c = std::make_unique<counter>(); break;
    case metric_type::gauge: ch->g = std::make_unique<gauge>(); break;
    case metric_type::histogram: ch->h = std::make_unique<histogram>(bounds); break;
    }
    children.push_back(std::move(ch));
    return children.back().get();
  }

  child* find_or_create(const std::string_view* values, std::size_t n) {
    if (n != label_names.size())
      throw std::invalid_argument("metric " + name + " expects " +
                                  std::to_string(label_names.size()) + " label values, got " +
                                  std::to_string(n));
    thread_local std::string key;
    key.clear();
    for (std::size_t i = 0; i < n; ++i) append_key(key, values[i]);
    {
      std::shared_lock lock(mu);
      auto it = index.find(key);
      if (it != index.end()) return it->second;
    }
    std::unique_lock lock(mu);
    auto it = index.find(key);
    if (it != index.end()) return it->second;
    if (regular_children >= max_children) {
      if (!overflow) {
        std::vector<std::string_view> ov(label_names.size(), overflow_label_value);
        std::string okey;
        for (auto& v : ov) append_key(okey, v);
        auto oit = index.find(okey);
        if (oit != index.end()) {
          overflow = oit->second; // someone used the reserved values on purpose
        } else {
          overflow = make_child(ov.data());
          index.emplace(std::move(okey), overflow);
        }
      }
      return overflow;
    }
    child* ch = make_child(values);
    index.emplace(key, ch);
    ++regular_children;
    return ch;
  }

  void render(std::string& out) const {
    append_header(out, name, help, type);
    std::shared_lock lock(mu);
    for (auto& ch : children) {
      if (type == metric_type::histogram) {
        auto cum = ch->h->cumulative_counts();
        for (std::size_t i = 0; i < cum.size(); ++i) {
          out += name;
          out += "_bucket{";
          out += ch->label_text;
          if (!ch->label_text.empty()) out += ',';
          out += "le=\"";
          out += le_text[i];
          out += "\"} ";
          append_uint(out, cum[i]);
          out += '\n';
        }
        const char* suffixes[2] = {"_sum", "_count"};
        for (int k = 0; k < 2; ++k) {
          out += name;
          out += suffixes[k];
          if (!ch->label_text.empty()) {
            out += '{';
            out += ch->label_text;
            out += '}';
          }
          out += ' ';
          if (k == 0)
            append_number(out, ch->h->sum());
          else
            append_uint(out, cum.back());
          out += '\n';
        }
        continue;
      }
      out += name;
      if (!ch->label_text.empty()) {
        out += '{';
        out += ch->label_text;
        out += '}';
      }
      out += ' ';
      if (type == metric_type::counter)
        append_uint(out, ch->c->value());
      else
        append_number(out, ch->g->value());
      out += '\n';
    }
  }
};

struct collected_family {
  std::string help;
  metric_type type;
  std::string samples;
};

struct scrape_state {
  std::map<std::string, collected_family, std::less<>> families;
  collected_family* current = nullptr;
  std::string current_name;
  bool started = false; // family() called in this collector
};

} // namespace detail

template <class Cell>
Cell& family<Cell>::with(std::initializer_list<std::string_view> label_values) const {
  return with(label_values.begin(), label_values.size());
}

template <class Cell>
Cell& family<Cell>::with(const std::string_view* label_values, std::size_t n) const {
  detail::child* ch = impl_->find_or_create(label_values, n);
  if constexpr (std::is_same_v<Cell, counter>)
    return *ch->c;
  else if constexpr (std::is_same_v<Cell, gauge>)
    return *ch->g;
  else
    return *ch->h;
}

template <class Cell>
const std::string& family<Cell>::name() const noexcept {
  return impl_->name;
}

template <class Cell>
std::size_t family<Cell>::size() const {
  std::shared_lock lock(impl_->mu);
  return impl_->children.size();
}

template class family<counter>;
template class family<gauge>;
template class family<histogram>;

// ---------------------------------------------------------------------------------------------
// Collectors

void exposition_writer::family(std::string_view name, std::string_view help, metric_type type) {
  if (!valid_metric_name(name))
    throw std::invalid_argument("invalid metric name: " + std::string(name));
  if (type == metric_type::histogram)
    throw std::invalid_argument("collectors write counters and gauges only: " +
                                std::string(name));
  s_.started = true;
  s_.current_name.assign(name.data(), name.size());
  auto it = s_.families.find(name);
  if (it == s_.families.end())
    it = s_.families
           .emplace(std::string(name), detail::collected_family{std::string(help), type, {}})
           .first;
  s_.current = it->second.type == type ? &it->second : nullptr;
}

void exposition_writer::sample(double value) { sample(nullptr, 0, value); }

void exposition_writer::sample(std::initializer_list<label> labels, double value) {
  sample(labels.begin(), labels.size(), value);
}

void exposition_writer::sample(const label* labels, std::size_t n, double value) {
  if (!s_.started) throw std::logic_error("exposition_writer::sample before family()");
  for (std::size_t i = 0; i < n; ++i)
    if (!valid_label_name(labels[i].name) || labels[i].name.substr(0, 2) == "__")
      throw std::invalid_argument("invalid label name: " + std::string(labels[i].name));
  if (!s_.current) return; // type conflict: dropped
  auto& out = s_.current->samples;
  out += s_.current_name;
  if (n) {
    out += '{';
    for (std::size_t i = 0; i < n; ++i) {
      if (i) out += ',';
      out += labels[i].name;
      out += "=\"";
      append_label_value(out, labels[i].value);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  append_number(out, value);
  out += '\n';
}

// ---------------------------------------------------------------------------------------------
// Registry

struct registry::state {
  mutable std::mutex mu;
  std::map<std::string, std::unique_ptr<detail::family_impl>, std::less<>> families;
  std::vector<collector> collectors;

  detail::family_impl* add(std::string name, std::string help, metric_type type,
                           std::vector<std::string> label_names, std::size_t max_children,
                           std::vector<double> bounds) {
    if (!valid_metric_name(name)) throw std::invalid_argument("invalid metric name: " + name);
    for (std::size_t i = 0; i < label_names.size(); ++i) {
      auto& l = label_names[i];
      if (!valid_label_name(l) || l.compare(0, 2, "__") == 0 ||
          (type == metric_type::histogram && l == "le"))
        throw std::invalid_argument("metric " + name + ": invalid label name: " + l);
      for (std::size_t j = 0; j < i; ++j)
        if (label_names[j] == l)
          throw std::invalid_argument("metric " + name + ": duplicate label name: " + l);
    }
    auto impl = std::make_unique<detail::family_impl>();
    if (type == metric_type::histogram) {
      if (!bounds.empty() && std::isinf(bounds.back()) && bounds.back() > 0) bounds.pop_back();
      for (std::size_t i = 0; i < bounds.size(); ++i)
        if (!std::isfinite(bounds[i]) || (i && !(bounds[i - 1] < bounds[i])))
          throw std::invalid_argument("metric " + name +
                                      ": buckets must be finite and strictly increasing");
      for (double b : bounds) {
        impl->le_text.emplace_back();
        append_number(impl->le_text.back(), b);
      }
      impl->le_text.emplace_back("+Inf");
      impl->bounds = std::move(bounds);
    }
    impl->name = name;
    impl->help = std::move(help);
    impl->type = type;
    impl->label_names = std::move(label_names);
    impl->max_children = max_children;
    std::lock_guard lock(mu);
    auto [it, inserted] = families.emplace(std::move(name), std::move(impl));
    if (!inserted) throw std::invalid_argument("metric already registered: " + it->first);
    return it->second.get();
  }
};

registry::registry() : state_(std::make_unique<state>()) {}
registry::~registry() = default;

family<counter> registry::counter_family(std::string name, std::string help,
                                         std::vector<std::string> label_names,
                                         std::size_t max_children) {
  return family<counter>(state_->add(std::move(name), std::move(help), metric_type::counter,
                                     std::move(label_names), max_children, {}));
}

family<gauge> registry::gauge_family(std::string name, std::string help,
                                     std::vector<std::string> label_names,
                                     std::size_t max_children) {
  return family<gauge>(state_->add(std::move(name), std::move(help), metric_type::gauge,
                                   std::move(label_names), max_children, {}));
}

family<histogram> registry::histogram_family(std::string name, std::string help,
                                             std::vector<std::string> label_names,
                                             std::vector<double> buckets,
                                             std::size_t max_children) {
  return family<histogram>(state_->add(std::move(name), std::move(help), metric_type::histogram,
                                       std::move(label_names), max_children,
                                       std::move(buckets)));
}

void registry::add_collector(collector c) {
  std::lock_guard lock(state_->mu);
  state_->collectors.push_back(std::move(c));
}

std::string registry::render() const {
  std::string out;
  render_into(out);
  return out;
}

void registry::render_into(std::string& out) const {
  out.clear();
  std::vector<collector> collectors;
  {
    std::lock_guard lock(state_->mu);
    collectors = state_->collectors;
  }
  detail::scrape_state scrape;
  exposition_writer w(scrape);
  for (auto& c : collectors) {
    scrape.current = nullptr;
    scrape.started = false;
    try {
      c(w);
    } catch (...) {
      // A broken collector must not break the scrape; what it wrote so far stays.
    }
  }

  std::lock_guard lock(state_->mu);
  auto r = state_->families.begin();
  auto re = state_->families.end();
  auto c = scrape.families.begin();
  auto ce = scrape.families.end();
  while (r != re || c != ce) {
    if (c == ce || (r != re && r->first <= c->first)) {
      r->second->render(out);
      if (c != ce && c->first == r->first) {
        if (c->second.type == r->second->type) out += c->second.samples;
        ++c;
      }
      ++r;
    } else {
      append_header(out, c->first, c->second.help, c->second.type);
      out += c->second.samples;
      ++c;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Process collector

namespace {

std::string read_file(const char* path) {
  std::ifstream in(path);
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Fields of /proc/self/stat after the command name: [0] is field 3 (state).
std::vector<std::string> stat_fields() {
  std::string s = read_file("/proc/self/stat");
  auto p = s.rfind(')');
  std::vector<std::string> f;
  if (p == std::string::npos) return f;
  std::istringstream in(s.substr(p + 1));
  std::string tok;
  while (in >> tok) f.push_back(tok);
  return f;
}

double boot_time() {
  std::istringstream in(read_file("/proc/stat"));
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, 6, "btime ") == 0) return std::strtod(line.c_str() + 6, nullptr);
  return -1;
}

void collect_process(exposition_writer& w) {
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  auto f = stat_fields();
  // utime, stime, starttime are fields 14, 15, 22 of proc(5).
  if (f.size() > 19 && ticks > 0) {
    double cpu = (std::strtod(f[11].c_str(), nullptr) + std::strtod(f[12].c_str(), nullptr)) /
                 ticks;
    w.family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
             metric_type::counter);
    w.sample(cpu);
    double btime = boot_time();
    if (btime >= 0) {
      w.family("process_start_time_seconds",
               "Start time of the process since unix epoch in seconds.", metric_type::gauge);
      w.sample(btime + std::strtod(f[19].c_str(), nullptr) / ticks);
    }
  }

  unsigned long long size = 0, resident = 0;
  std::string statm = read_file("/proc/self/statm");
  if (std::sscanf(statm.c_str(), "%llu %llu", &size, &resident) == 2) {
    w.family("process_virtual_memory_bytes", "Virtual memory size in bytes.", metric_type::gauge);
    w.sample(static_cast<double>(size) * page);
    w.family("process_resident_memory_bytes", "Resident memory size in bytes.",
             metric_type::gauge);
    w.sample(static_cast<double>(resident) * page);
  }

  if (DIR* d = opendir("/proc/self/fd")) {
    double n = 0;
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
    w.family("process_open_fds", "Number of open file descriptors.", metric_type::gauge);
    w.sample(n);
  }

  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    w.family("process_max_fds", "Maximum number of open file descriptors.", metric_type::gauge);
    w.sample(static_cast<double>(rl.rlim_cur));
  }
}

} // namespace

void add_process_collector(registry& reg) { reg.add_collector(collect_process); }

} // namespace parley::metrics
