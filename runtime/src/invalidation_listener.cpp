#include "invalidation_listener.hpp"

#include <algorithm>
#include <vector>

namespace parley::runtime {

namespace {
const char* kind_name(persistence::cached_change::kind k) {
  return k == persistence::cached_change::kind::key ? "key" : "tenant";
}
} // namespace

invalidation_listener::invalidation_listener(std::unique_ptr<persistence::change_feed> feed,
                                             tenants::key_cache& keys, log::logger_ptr logger,
                                             options opts)
  : feed_(std::move(feed)), keys_(keys), logger_(std::move(logger)), opts_(opts) {}

invalidation_listener::~invalidation_listener() { stop(); }

void invalidation_listener::start() { thread_ = std::thread([this] { run(); }); }

void invalidation_listener::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

bool invalidation_listener::stopping() {
  std::lock_guard<std::mutex> lock(mu_);
  return stop_;
}

bool invalidation_listener::sleep_or_stop(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, d, [this] { return stop_; });
}

void invalidation_listener::run() {
  auto backoff = opts_.backoff_min;
  bool retry_now = true; // the first attempt, and the first after a connection that worked
  while (!stopping()) {
    if (!feed_->is_open()) {
      if (!retry_now) {
        if (sleep_or_stop(backoff))
          break;
        backoff = std::min(backoff * 2, opts_.backoff_max);
      }
      retry_now = false;
      // Whatever changed while nobody listened is found by version, at once.
      if (!connect() || !check_versions())
        continue;
    }
    std::vector<persistence::cached_change> changes;
    auto waited = feed_->wait(opts_.wait, changes);
    for (auto& c : changes)
      invalidate(c, "notification");
    if (!waited.ok()) {
      log::event(logger_, spdlog::level::warn, "invalidation listener lost its connection")
        .str("error", waited.error().detail);
      continue;
    }
    // The connection works: its loss is retried at once, then with growing backoff.
    backoff = opts_.backoff_min;
    retry_now = true;
    if (std::chrono::steady_clock::now() >= next_check_)
      check_versions();
  }
  feed_->close();
}

bool invalidation_listener::connect() {
  auto opened = feed_->open();
  if (!opened.ok()) {
    log::event(logger_, spdlog::level::warn, "invalidation listener cannot connect")
      .str("error", opened.error().detail);
    return false;
  }
  if (!connected_once_) {
    // Entries cached before anybody listened may predate changes nobody will tell us about:
    // start from an empty cache (at start-up it is empty anyway) and from today's newest
    // version.
    auto newest = feed_->newest_version();
    if (!newest.ok()) {
      log::event(logger_, spdlog::level::warn, "invalidation listener cannot read versions")
        .str("error", newest.error().detail);
      feed_->close();
      return false;
    }
    keys_.clear();
    newest_ = *newest;
    connected_once_ = true;
    log::event(logger_, spdlog::level::info, "invalidation listener connected")
      .num("backend_pid", feed_->backend_pid())
      .num("newest_version", newest_);
  } else {
    log::event(logger_, spdlog::level::info, "invalidation listener reconnected")
      .num("backend_pid", feed_->backend_pid())
      .num("newest_version", newest_);
  }
  return true;
}

bool invalidation_listener::check_versions() {
  next_check_ = std::chrono::steady_clock::now() + opts_.poll;
  auto floor = newest_ - opts_.lookback;
  auto rows = feed_->changed_since(floor, opts_.poll_limit);
  if (!rows.ok()) {
    log::event(logger_, spdlog::level::warn, "invalidation version check failed")
      .str("error", rows.error().detail);
    return false;
  }
  if (static_cast<int>(rows->size()) >= opts_.poll_limit) {
    // More changes in the window than one answer holds: those not listed are unknown.
    keys_.clear();
    log::event(logger_, spdlog::level::warn, "key cache cleared: too many changes to tell apart")
      .num("changes", static_cast<int64_t>(rows->size()));
  }
  for (auto& c : *rows) {
    auto tag = (c.what == persistence::cached_change::kind::key ? "k:" : "t:") + c.id;
    auto& seen = seen_[tag];
    if (seen < c.updated_at) {
      // Usually announced by a notification already; invalidating twice costs one re-read.
      invalidate(c, "version");
      seen = c.updated_at;
    }
    newest_ = std::max(newest_, c.updated_at);
  }
  // Forget what fell out of the window: it will not be listed again.
  auto below = newest_ - opts_.lookback;
  for (auto it = seen_.begin(); it != seen_.end();)
    it = it->second <= below ? seen_.erase(it) : std::next(it);
  return true;
}

void invalidation_listener::invalidate(const persistence::cached_change& c, const char* source) {
  if (c.what == persistence::cached_change::kind::key)
    keys_.invalidate_key(c.id);
  else
    keys_.invalidate_tenant(c.id);
  log::event(logger_, spdlog::level::debug, "key cache invalidated")
    .str("kind", kind_name(c.what))
    .str("id", c.id)
    .str("source", source)
    .num("version", c.updated_at);
}

} // namespace parley::runtime
