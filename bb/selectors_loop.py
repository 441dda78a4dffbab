"""The event loop: I/O watchers, timers, prepare hooks, a thread hand-off.

Mirrors the libev loop the original was built on, on top of ``selectors``:

- ``IOWatcher``: one per file descriptor, with a read and a write callback
  and an interest mask changed cheaply (one selector call, only on change);
- timers: a heap of (deadline, seq, Timer) on ``time.monotonic()`` with lazy
  cancellation; repeating timers re-arm themselves;
- prepare hooks, run before every wait (ZeroMQ's edge-triggered descriptor is
  drained there), and check hooks, run after the callbacks of each wake-up
  (where batched writes are flushed);
- ``call_soon_threadsafe``: worker threads (TLS handshakes, config reloads)
  queue a callback and write one byte to a wake-up socketpair;
- signals: ``signal.set_wakeup_fd`` on the same socketpair; handlers only
  record the signal, the loop dispatches it.

Invariant: the loop knows nothing of HTTP.  A callback may close another
watcher whose descriptor is reused before the batch is done, so each event
is checked against the watcher that owns the descriptor now.
"""

import collections
import heapq
import logging
import selectors
import signal
import socket
import time

log = logging.getLogger("blastbeat.loop")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class IOWatcher:
    """Read/write interest on one descriptor.  ``events`` is the current mask."""

    __slots__ = ("loop", "fd", "fileobj", "on_read", "on_write", "events", "active")

    def __init__(self, loop, fileobj, on_read=None, on_write=None):
        self.loop = loop
        self.fileobj = fileobj
        self.fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self.on_read = on_read
        self.on_write = on_write
        self.events = 0
        self.active = True

    def set(self, events):
        """Change interest to ``events`` (EVENT_READ | EVENT_WRITE or 0)."""
        if events == self.events or not self.active:
            return
        sel = self.loop.selector
        if self.events == 0:
            sel.register(self.fd, events, self)
        elif events == 0:
            sel.unregister(self.fd)
        else:
            sel.modify(self.fd, events, self)
        self.events = events

    def want_read(self, on):
        self.set(self.events | EVENT_READ if on else self.events & ~EVENT_READ)

    def want_write(self, on):
        self.set(self.events | EVENT_WRITE if on else self.events & ~EVENT_WRITE)

    def stop(self):
        """Forget the descriptor (before it is closed).  Idempotent."""
        if self.active:
            self.set(0)
            self.active = False


class Timer:
    __slots__ = ("when", "callback", "args", "interval", "cancelled")

    def __init__(self, when, callback, args, interval):
        self.when = when
        self.callback = callback
        self.args = args
        self.interval = interval
        self.cancelled = False

    def cancel(self):
        self.cancelled = True

    def __lt__(self, other):
        return self.when < other.when


class Loop:
    """A single-threaded event loop; only ``call_soon_threadsafe`` is thread-safe."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.now = time.monotonic()
        self._timers = []
        self._ready = collections.deque()
        self._threadsafe = collections.deque()
        self._prepare = []
        self._check = []
        self._signal_handlers = {}
        self._pending_signals = collections.deque()
        self._running = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_watcher = IOWatcher(self, self._wake_r, self._on_wakeup)
        self._wake_watcher.set(EVENT_READ)
        self._old_wakeup_fd = None
        self.call_repeatedly(10.0, self._compact_timers)

    # -- watchers and hooks ------------------------------------------------

    def io(self, fileobj, on_read=None, on_write=None):
        return IOWatcher(self, fileobj, on_read, on_write)

    def add_prepare(self, hook):
        self._prepare.append(hook)

    def add_check(self, hook):
        self._check.append(hook)

    # -- timers ---------------------------------------------------------------

    def call_later(self, delay, callback, *args):
        timer = Timer(self.now + delay, callback, args, None)
        heapq.heappush(self._timers, timer)
        return timer

    def call_at(self, when, callback, *args):
        timer = Timer(when, callback, args, None)
        heapq.heappush(self._timers, timer)
        return timer

    def call_repeatedly(self, interval, callback, *args, first=None):
        timer = Timer(self.now + (interval if first is None else first),
                      callback, args, interval)
        heapq.heappush(self._timers, timer)
        return timer

    def call_soon(self, callback, *args):
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback, *args):
        self._threadsafe.append((callback, args))
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is awake anyway

    # -- signals --------------------------------------------------------------

    def add_signal_handler(self, signum, callback):
        """Run ``callback(signum)`` in the loop when ``signum`` arrives."""
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(),
                                                       warn_on_full_buffer=False)
        self._signal_handlers[signum] = callback
        signal.signal(signum, self._record_signal)

    def _record_signal(self, signum, frame):
        self._pending_signals.append(signum)

    def _on_wakeup(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- running -------------------------------------------------------------

    def stop(self):
        self._running = False

    def run(self):
        self._running = True
        select = self.selector.select
        timers = self._timers
        ready = self._ready
        threadsafe = self._threadsafe
        pending_signals = self._pending_signals
        monotonic = time.monotonic
        prepare = self._prepare
        check = self._check
        while self._running:
            for hook in prepare:
                try:
                    hook()
                except Exception:
                    log.exception("unhandled error in prepare hook %r", hook)
            if ready or threadsafe or pending_signals or not self._running:
                timeout = 0
            elif timers:
                timeout = max(0.0, timers[0].when - monotonic())
            else:
                timeout = None
            events = select(timeout)
            self.now = monotonic()
            for key, mask in events:
                watcher = key.data
                try:
                    if mask & EVENT_READ and watcher.active:
                        watcher.on_read()
                    if mask & EVENT_WRITE and watcher.active:
                        watcher.on_write()
                except Exception:
                    log.exception("unhandled error in I/O callback of fd %d", watcher.fd)
            while pending_signals:
                signum = pending_signals.popleft()
                handler = self._signal_handlers.get(signum)
                if handler:
                    self._guard(handler, signum)
            while threadsafe:
                callback, args = threadsafe.popleft()
                self._guard(callback, *args)
            for _ in range(len(ready)):
                callback, args = ready.popleft()
                self._guard(callback, *args)
            now = self.now
            while timers and timers[0].when <= now:
                timer = heapq.heappop(timers)
                if timer.cancelled:
                    continue
                if timer.interval is not None:
                    timer.when = max(timer.when + timer.interval, now)
                    heapq.heappush(timers, timer)
                self._guard(timer.callback, *timer.args)
            for hook in check:
                try:
                    hook()
                except Exception:
                    log.exception("unhandled error in check hook %r", hook)

    def _compact_timers(self):
        """Drop cancelled timers so that closed connections free their memory."""
        live = [t for t in self._timers if not t.cancelled]
        if len(live) < len(self._timers):
            self._timers[:] = live
            heapq.heapify(self._timers)

    def _guard(self, callback, *args):
        """A failing callback is logged; it never takes the loop down."""
        try:
            callback(*args)
        except Exception:
            log.exception("unhandled error in %r", callback)

    def close(self):
        if self._old_wakeup_fd is not None:
            try:
                signal.set_wakeup_fd(self._old_wakeup_fd)
            except ValueError:
                pass
        self._wake_watcher.stop()
        self._wake_r.close()
        self._wake_w.close()
        self.selector.close()
