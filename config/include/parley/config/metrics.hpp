#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

/// A small Prometheus metrics library: counters, gauges and histograms in labelled families,
/// scrape-time collectors, and the text exposition format 0.0.4.
///
/// Usage: register every family at start-up, look children up once and keep the reference:
///
///     metrics::registry reg;
///     auto requests = reg.counter_family("parley_http_requests_total", "HTTP requests.",
///                                        {"route", "method", "status_class", "tenant"});
///     metrics::counter& ok = requests.with({"/v1/models", "GET", "2xx", tenant_id});
///     ok.inc();                                   // lock-free, a few ns
///     auto lat = reg.histogram_family("parley_http_request_duration_seconds",
///                                     "Total server time.", {"route"});
///     lat.with({"/v1/chat/completions"}).observe(0.012);
///     std::string body = reg.render();            // serve with metrics::content_type
///
/// Cost model:
/// - counter::inc, gauge::set/inc/dec and histogram::observe take no lock and never allocate.
/// - family::with takes a shared (reader) lock and a hash lookup keyed by the label values;
///   it allocates only the first time a label set is seen (and never on the calling thread's
///   lookup key after warm-up). Fine per request; cache the reference where labels are fixed.
/// - Registration and rendering take locks and allocate.
///
/// Children (the references `with` returns) live as long as the registry; they are never
/// removed. Cardinality guard: each family holds at most `max_children` distinct label sets
/// (10000 unless given at registration). Once full, every *new* label set maps to one shared
/// overflow child whose label values are all `__overflow__` (already-known label sets keep
/// working). Alert on `{<label>="__overflow__"}` if that matters.
///
/// Exposition: families are rendered sorted by name, each with `# HELP` and `# TYPE` exactly
/// once (also when it has no children yet); children appear in creation order. Collector
/// output for the same family name is merged under one HELP/TYPE.
namespace parley::metrics {

/// The Content-Type of registry::render()'s output.
inline constexpr const char* content_type = "text/plain; version=0.0.4; charset=utf-8";

/// The label value of the overflow child (see the cardinality guard above).
inline constexpr const char* overflow_label_value = "__overflow__";

/// Children per family unless registration says otherwise.
inline constexpr std::size_t default_max_children = 10000;

enum class metric_type { counter, gauge, histogram };

/// Default histogram buckets for latencies in seconds (0.5 ms .. 120 s).
const std::vector<double>& default_latency_buckets();

/// A monotonically increasing integer.
class counter {
public:
  counter() = default;
  counter(const counter&) = delete;
  counter& operator=(const counter&) = delete;

  void inc(uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<uint64_t> value_{0};
};

/// A value that goes up and down (stored as the bit pattern of a double).
class gauge {
public:
  gauge() = default;
  gauge(const gauge&) = delete;
  gauge& operator=(const gauge&) = delete;

  void set(double v) noexcept { bits_.store(to_bits(v), std::memory_order_relaxed); }
  template <class T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
  void set(T v) noexcept {
    set(static_cast<double>(v));
  }
  void inc(double d = 1.0) noexcept { add(d); }
  void dec(double d = 1.0) noexcept { add(-d); }
  double value() const noexcept { return from_bits(bits_.load(std::memory_order_relaxed)); }

private:
  static uint64_t to_bits(double v) noexcept {
    uint64_t b;
    std::memcpy(&b, &v, sizeof b);
    return b;
  }
  static double from_bits(uint64_t b) noexcept {
    double v;
    std::memcpy(&v, &b, sizeof v);
    return v;
  }
  void add(double d) noexcept;

  std::atomic<uint64_t> bits_{0}; // +0.0
};

/// Observations counted into fixed buckets (upper bounds inclusive, as Prometheus `le`).
class histogram {
public:
  /// `bounds` (strictly increasing, finite) must outlive the histogram; the registry owns it.
  explicit histogram(const std::vector<double>& bounds);
  histogram(const histogram&) = delete;
  histogram& operator=(const histogram&) = delete;

  /// Lock-free: one relaxed increment of the bucket, one CAS loop on the sum. NaN counts
  /// only in the +Inf bucket (and makes the sum NaN).
  void observe(double v) noexcept;

  const std::vector<double>& bounds() const noexcept { return *bounds_; }
  /// Cumulative counts: one per bound, then +Inf (== count()).
  std::vector<uint64_t> cumulative_counts() const;
  uint64_t count() const noexcept;
  double sum() const noexcept;

private:
  const std::vector<double>* bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_; // bounds_->size() + 1, not cumulative
  std::atomic<uint64_t> sum_bits_{0};
};

namespace detail {
struct family_impl;
struct scrape_state;
} // namespace detail

/// A handle on a registered family; cheap to copy, valid as long as the registry.
/// `Cell` is counter, gauge or histogram.
template <class Cell>
class family {
public:
  /// The child for these label values (one per label name, in registration order); created
  /// on first use. Throws std::invalid_argument when the number of values is wrong.
  Cell& with(std::initializer_list<std::string_view> label_values = {}) const;
  /// Same, for label values computed at run time.
  Cell& with(const std::string_view* label_values, std::size_t n) const;

  const std::string& name() const noexcept;
  /// Distinct label sets so far (including the overflow child if it exists).
  std::size_t size() const;

private:
  friend class registry;
  explicit family(detail::family_impl* impl) noexcept : impl_(impl) {}
  detail::family_impl* impl_;
};

/// One label of a collector sample.
struct label {
  std::string_view name;
  std::string_view value;
};

/// What collectors write into at scrape time. Call family() first, then sample() for each
/// series of that family. HELP/TYPE are written once per family name for the whole scrape,
/// however many collectors (or registered families) contribute samples. Collectors may
/// write counter and gauge families only. Samples for a name already seen with a different
/// type are dropped. Invalid metric or label names throw std::invalid_argument.
class exposition_writer {
public:
  exposition_writer(const exposition_writer&) = delete;
  exposition_writer& operator=(const exposition_writer&) = delete;

  void family(std::string_view name, std::string_view help, metric_type type);
  void sample(double value);
  void sample(std::initializer_list<label> labels, double value);
  void sample(const label* labels, std::size_t n, double value);

private:
  friend class registry;
  explicit exposition_writer(detail::scrape_state& s) noexcept : s_(s) {}
  detail::scrape_state& s_;
};

using collector = std::function<void(exposition_writer&)>;

/// Owns families and collectors. Thread-safe. Not copyable or movable.
class registry {
public:
  registry();
  ~registry();
  registry(const registry&) = delete;
  registry& operator=(const registry&) = delete;

  /// Registration throws std::invalid_argument for an invalid or already registered name,
  /// invalid or duplicate label names (`__*` is reserved; `le` too for histograms), and
  /// bucket bounds that are not strictly increasing and finite (a trailing +Inf is dropped).
  family<counter> counter_family(std::string name, std::string help,
                                 std::vector<std::string> label_names = {},
                                 std::size_t max_children = default_max_children);
  family<gauge> gauge_family(std::string name, std::string help,
                             std::vector<std::string> label_names = {},
                             std::size_t max_children = default_max_children);
  family<histogram> histogram_family(std::string name, std::string help,
                                     std::vector<std::string> label_names = {},
                                     std::vector<double> buckets = default_latency_buckets(),
                                     std::size_t max_children = default_max_children);

  /// Runs at every render, on the rendering thread, after nothing is locked. A collector
  /// that throws loses only the samples it had not written yet.
  void add_collector(collector c);

  /// The text exposition (format 0.0.4) of every family and collector.
  std::string render() const;
  /// Same, replacing the contents of `out` (reuse one string to avoid reallocations).
  void render_into(std::string& out) const;

private:
  struct state;
  std::unique_ptr<state> state_;
};

/// Registers a collector for the standard process metrics (Linux /proc):
/// process_cpu_seconds_total, process_open_fds, process_max_fds,
/// process_virtual_memory_bytes, process_resident_memory_bytes, process_start_time_seconds.
void add_process_collector(registry& reg);

/// Appends `v` as Prometheus prints numbers: integral values below 1e15 without exponent,
/// other values in the shortest round-trip form (Go's %g style), NaN, +Inf, -Inf.
void append_number(std::string& out, double v);
/// Appends `v` escaped as a label value (backslash, double quote, newline).
void append_label_value(std::string& out, std::string_view v);
/// Appends `v` escaped as HELP text (backslash, newline).
void append_help(std::string& out, std::string_view v);

} // namespace parley::metrics
