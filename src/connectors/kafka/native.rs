//! librdkafka calls that rdkafka does not wrap, for the Kafka reader: one
//! of the two places in eddy with `unsafe` (the other is glibc's
//! `malloc_trim` in `state::memory`).
//!
//! rdkafka hands out one message per poll, and each poll reads the clock
//! four times (the poll's timeout, librdkafka's poll-interval bookkeeping
//! twice, rdkafka's own timeout), allocates an `Arc` for the message's event
//! and frees it again: about a seventh of the CPU time of Nexmark q3 and
//! q8 (persons and auctions from Kafka). librdkafka's
//! `rd_kafka_consume_batch_queue` takes everything queued (up to a limit)
//! in one call ([`ConsumerQueue::drain`]); with it q3 and q8 read 16-19 %
//! more events per CPU-second.
//!
//! A reader still waits through rdkafka's message stream (which registers a
//! waker with librdkafka) when nothing is queued: that message comes as a
//! [`Delivered::Polled`], the ones drained after it as
//! [`Delivered::Drained`].
//!
//! The batch call serves the client's other events itself and drops those
//! the application would handle (statistics, errors, logs), which rdkafka
//! routes into the consumer queue. [`ClientEvents`] routes them back to
//! librdkafka's main queue and serves them as rdkafka would, to the
//! client's context (`ReaderContext` takes the partitions' offsets from the
//! statistics) and to the log.
//!
//! Invariants (what makes the `unsafe` sound):
//! - A [`DrainedMessage`] owns its `rd_kafka_message_t` and destroys it
//!   once, when dropped; its payload and key are borrowed from it, so they
//!   cannot outlive it.
//! - A [`ConsumerQueue`] and every message drained through it borrow the
//!   consumer (`'c`), and [`ClientEvents`] holds it: librdkafka's client
//!   outlives every queue handle and message.
//! - librdkafka's queues and messages may be used and destroyed from any
//!   thread, which is why these are `Send`.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;

/// A handle on a consumer's message queue (librdkafka's consumer queue,
/// into which every assigned partition's fetched messages go).
pub(super) struct ConsumerQueue<'c> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// Where librdkafka writes a drain's message pointers; empty between
    /// drains (each pointer is wrapped in a `DrainedMessage` at once).
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
    consumer: PhantomData<&'c ()>,
}

// SAFETY: librdkafka's queue handles are thread-safe (a queue has its own
// lock); the handle is reference-counted and destroyed once, on drop.
unsafe impl Send for ConsumerQueue<'_> {}

impl<'c> ConsumerQueue<'c> {
    /// The queue of `consumer`, which must have a `group.id` (without one
    /// librdkafka has no consumer queue): `None` then.
    pub fn of<C: ConsumerContext>(consumer: &'c StreamConsumer<C>) -> Option<Self> {
        // SAFETY: the client pointer is valid while `consumer` is, which
        // the returned queue borrows; the call returns a new reference
        // (or NULL), released in `drop`.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        Some(Self {
            queue: NonNull::new(queue)?,
            taken: Vec::new(),
            consumer: PhantomData,
        })
    }

    /// Appends to `into` what is queued now, up to `room` messages, without
    /// waiting; returns how many were taken. librdkafka reports errors for
    /// partitions (such as reaching a partition's end) as messages too:
    /// those come as errors.
    pub fn drain(
        &mut self,
        into: &mut Vec<Result<Delivered<'c>, KafkaError>>,
        room: usize,
    ) -> usize {
        if room == 0 {
            return 0;
        }
        self.taken.clear();
        self.taken.reserve(room);
        // SAFETY: `taken` has room for `room` pointers; librdkafka writes at
        // most that many and returns how many (or -1 on error, when the
        // queue is forwarded elsewhere, which a consumer queue is not).
        let count = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                0,
                self.taken.as_mut_ptr(),
                room,
            )
        };
        let count = usize::try_from(count).unwrap_or(0).min(room);
        // SAFETY: librdkafka initialised the first `count` pointers.
        unsafe { self.taken.set_len(count) };
        into.extend(self.taken.drain(..).filter_map(|message| {
            let message = DrainedMessage {
                message: NonNull::new(message)?,
                consumer: PhantomData,
            };
            Some(match message.error() {
                Some(error) => Err(error),
                None => Ok(Delivered::Drained(message)),
            })
        }));
        count
    }
}

impl Drop for ConsumerQueue<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_get_consumer` and is
        // released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// One message taken by [`ConsumerQueue::drain`].
pub(super) struct DrainedMessage<'c> {
    message: NonNull<rdsys::rd_kafka_message_t>,
    consumer: PhantomData<&'c ()>,
}

// SAFETY: a librdkafka message may be read and destroyed from any thread;
// this value owns it.
unsafe impl Send for DrainedMessage<'_> {}

impl DrainedMessage<'_> {
    fn raw(&self) -> &rdsys::rd_kafka_message_t {
        // SAFETY: the message is valid until `drop`.
        unsafe { self.message.as_ref() }
    }

    /// The error this message carries in place of a message (librdkafka
    /// reports a partition's end and fetch errors this way).
    fn error(&self) -> Option<KafkaError> {
        let raw = self.raw();
        let code = RDKafkaErrorCode::from(raw.err);
        match code {
            RDKafkaErrorCode::NoError => None,
            RDKafkaErrorCode::PartitionEOF => Some(KafkaError::PartitionEOF(raw.partition)),
            code => Some(KafkaError::MessageConsumption(code)),
        }
    }

    /// The bytes at `data` (NULL: none), borrowed from the message.
    fn bytes(&self, data: *mut std::ffi::c_void, len: usize) -> Option<&[u8]> {
        if data.is_null() {
            return None;
        }
        // SAFETY: librdkafka's payload and key pointers, with their
        // lengths, stay valid and unchanged until the message is destroyed.
        Some(unsafe { std::slice::from_raw_parts(data as *const u8, len) })
    }
}

impl Drop for DrainedMessage<'_> {
    fn drop(&mut self) {
        // SAFETY: the message came from `rd_kafka_consume_batch_queue`
        // and is destroyed once.
        unsafe { rdsys::rd_kafka_message_destroy(self.message.as_ptr()) }
    }
}

/// A message as the reader received it: polled through rdkafka's stream,
/// or drained with those queued behind it.
pub(super) enum Delivered<'c> {
    Polled(BorrowedMessage<'c>),
    Drained(DrainedMessage<'c>),
}

impl Delivered<'_> {
    pub fn partition(&self) -> i32 {
        match self {
            Self::Polled(message) => message.partition(),
            Self::Drained(message) => message.raw().partition,
        }
    }

    pub fn offset(&self) -> i64 {
        match self {
            Self::Polled(message) => message.offset(),
            Self::Drained(message) => message.raw().offset,
        }
    }

    /// The message's timestamp (create or log-append time) in ms.
    pub fn timestamp_ms(&self) -> Option<i64> {
        match self {
            Self::Polled(message) => message.timestamp().to_millis(),
            Self::Drained(message) => {
                let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
                // SAFETY: a valid message, and a place for the type.
                let millis = unsafe { rdsys::rd_kafka_message_timestamp(message.raw(), &mut kind) };
                let available = kind
                    != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
                    && millis != -1;
                available.then_some(millis)
            }
        }
    }

    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Self::Polled(message) => message.key(),
            Self::Drained(message) => message.bytes(message.raw().key, message.raw().key_len),
        }
    }

    pub fn payload(&self) -> Option<&[u8]> {
        match self {
            Self::Polled(message) => message.payload(),
            Self::Drained(message) => message.bytes(message.raw().payload, message.raw().len),
        }
    }
}

/// A consumer's statistics, errors and logs, taken off its consumer queue
/// (where rdkafka routes them and where [`ConsumerQueue::drain`] would drop
/// them) and served by [`Self::serve`].
pub(super) struct ClientEvents<C: ConsumerContext + 'static> {
    /// librdkafka's main queue, no longer forwarded to the consumer queue.
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// Keeps the client alive while the handle is: dropped after `drop`
    /// released the handle (fields drop after `Drop::drop` runs).
    consumer: Arc<StreamConsumer<C>>,
}

// SAFETY: as for `ConsumerQueue`; the consumer is `Send + Sync`.
unsafe impl<C: ConsumerContext + 'static> Send for ClientEvents<C> {}
unsafe impl<C: ConsumerContext + 'static> Sync for ClientEvents<C> {}

impl<C: ConsumerContext + 'static> ClientEvents<C> {
    /// Routes `consumer`'s events to librdkafka's main queue; from then on
    /// they wait there until [`Self::serve`]d.
    pub fn split_off(consumer: Arc<StreamConsumer<C>>) -> Option<Self> {
        // SAFETY: the client pointer is valid while `consumer` is, which
        // the value holds; `rd_kafka_queue_get_main` returns a new
        // reference (released in `drop`), and forwarding to NULL stops the
        // forwarding rdkafka set up (`rd_kafka_poll_set_consumer`).
        let queue = unsafe {
            let queue = rdsys::rd_kafka_queue_get_main(consumer.client().native_ptr());
            if !queue.is_null() {
                rdsys::rd_kafka_queue_forward(queue, std::ptr::null_mut());
            }
            queue
        };
        Some(Self {
            queue: NonNull::new(queue)?,
            consumer,
        })
    }

    /// Serves what is queued, without waiting: statistics and errors to
    /// the client's context, log lines to its log.
    pub fn serve(&self) {
        let context = self.consumer.client().context();
        loop {
            // SAFETY: a valid queue; the event returned (if any) is ours and
            // destroyed below, after the strings borrowed from it are used.
            let event = unsafe { rdsys::rd_kafka_queue_poll(self.queue.as_ptr(), 0) };
            if event.is_null() {
                return;
            }
            // SAFETY: `event` is a valid event until destroyed; the accessors
            // used are those for its type, and their strings are
            // NUL-terminated and live as long as the event.
            unsafe {
                match rdsys::rd_kafka_event_type(event) {
                    rdsys::RD_KAFKA_EVENT_STATS => {
                        let json = rdsys::rd_kafka_event_stats(event);
                        if !json.is_null() {
                            context.stats_raw(CStr::from_ptr(json).to_bytes());
                        }
                    }
                    rdsys::RD_KAFKA_EVENT_ERROR => {
                        let error = KafkaError::Global(rdsys::rd_kafka_event_error(event).into());
                        let reason = rdsys::rd_kafka_event_error_string(event);
                        let reason = if reason.is_null() {
                            Default::default()
                        } else {
                            CStr::from_ptr(reason).to_string_lossy()
                        };
                        context.error(error, reason.trim());
                    }
                    rdsys::RD_KAFKA_EVENT_LOG => {
                        let (mut facility, mut message) = (std::ptr::null(), std::ptr::null());
                        let mut level = 0;
                        if rdsys::rd_kafka_event_log(event, &mut facility, &mut message, &mut level)
                            == 0
                            && !facility.is_null()
                            && !message.is_null()
                        {
                            context.log(
                                log_level(level),
                                CStr::from_ptr(facility).to_string_lossy().trim(),
                                CStr::from_ptr(message).to_string_lossy().trim(),
                            );
                        }
                    }
                    // Others (OAuth token refreshes, which readers do not
                    // configure) need nothing from a reader.
                    _ => {}
                }
                rdsys::rd_kafka_event_destroy(event);
            }
        }
    }
}

impl<C: ConsumerContext + 'static> Drop for ClientEvents<C> {
    /// Forwards the main queue to the consumer queue again, as rdkafka set
    /// it up: closing the consumer (when rdkafka drops it) serves only the
    /// consumer queue, and with events left unserved on the main queue
    /// librdkafka's threads never finish (the drop hung).
    fn drop(&mut self) {
        // SAFETY: the client is alive (`consumer`); the consumer queue
        // handle is released at once, the main queue's (from
        // `rd_kafka_queue_get_main`) once, here.
        unsafe {
            let client = self.consumer.client().native_ptr();
            let consumer_queue = rdsys::rd_kafka_queue_get_consumer(client);
            if !consumer_queue.is_null() {
                rdsys::rd_kafka_queue_forward(self.queue.as_ptr(), consumer_queue);
                rdsys::rd_kafka_queue_destroy(consumer_queue);
            }
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// librdkafka's syslog level as rdkafka's.
fn log_level(level: i32) -> RDKafkaLogLevel {
    match level {
        i32::MIN..=0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}
