//! The standard Nexmark event generator (the one of Apache Beam's and Flink's
//! Nexmark suites), re-implemented from its published rules.
//!
//! Event number `n` (from 0) is a person when `n % 50 < 1`, an auction when
//! `n % 50 < 4`, else a bid (the standard 1 : 3 : 46 proportions). Every event
//! draws its fields from a `java.util.Random` seeded with its own number, so
//! an event is a pure function of `(n, seed, rate, base time)`: any range of
//! events can be generated alone, in any batching, and with seed 0 the
//! values are the ones the reference generator draws, in the same order.
//! Ids, hot sellers/bidders/auctions, prices (`round(10^(6u) * 100)`),
//! auction lengths and the `extra` padding follow the reference; `channel`
//! and `url` follow Flink's extension (its URLs, random per run there, are
//! derived from the seed here so runs repeat).

/// Person, auction and bid shares of every 50 events.
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
pub const TOTAL_PROPORTION: u64 = 50;

const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: i32 = 5;
const PERSON_ID_LEAD: i64 = 10;
const AUCTION_ID_LEAD: i64 = 10;
const HOT_SELLER_RATIO: i64 = 100;
const HOT_AUCTION_RATIO: i64 = 100;
const HOT_BIDDER_RATIO: i64 = 100;
/// `hotSellersRatio`, `hotAuctionRatio`, `hotBiddersRatio` of the default
/// configuration.
const HOT_SELLERS_DRAW: i32 = 4;
const HOT_AUCTIONS_DRAW: i32 = 2;
const HOT_BIDDERS_DRAW: i32 = 4;
const NUM_ACTIVE_PEOPLE: i64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
const AVG_PERSON_BYTES: i32 = 200;
const AVG_AUCTION_BYTES: i32 = 500;
const AVG_BID_BYTES: i32 = 100;
const HOT_CHANNELS_RATIO: i32 = 2;
const CHANNELS_NUMBER: i32 = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// `java.util.Random`: the 48-bit linear congruential generator, bit for bit,
/// so that seeded draws equal the reference generator's.
pub struct JavaRandom {
    state: u64,
}

const MULTIPLIER: u64 = 0x5_DEEC_E66D;
const MASK: u64 = (1 << 48) - 1;

impl JavaRandom {
    pub fn new(seed: i64) -> Self {
        Self {
            state: (seed as u64 ^ MULTIPLIER) & MASK,
        }
    }

    fn next(&mut self, bits: u32) -> i32 {
        self.state = (self.state.wrapping_mul(MULTIPLIER).wrapping_add(0xB)) & MASK;
        (self.state >> (48 - bits)) as u32 as i32
    }

    pub fn next_int(&mut self) -> i32 {
        self.next(32)
    }

    /// Uniform in `[0, bound)`; `bound` must be positive.
    pub fn next_int_below(&mut self, bound: i32) -> i32 {
        debug_assert!(bound > 0);
        let mut r = self.next(31);
        let m = bound - 1;
        if bound & m == 0 {
            return ((bound as i64 * r as i64) >> 31) as i32;
        }
        let mut u = r;
        loop {
            r = u % bound;
            // Java's rejection test relies on int overflow.
            if u.wrapping_sub(r).wrapping_add(m) >= 0 {
                return r;
            }
            u = self.next(31);
        }
    }

    pub fn next_long(&mut self) -> i64 {
        ((self.next(32) as i64) << 32).wrapping_add(self.next(32) as i64)
    }

    pub fn next_double(&mut self) -> f64 {
        let high = (self.next(26) as i64) << 27;
        (high + self.next(27) as i64) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The reference's `LongGenerator.nextLong(random, n)`.
    fn next_long_below(&mut self, n: i64) -> i64 {
        if n < i32::MAX as i64 {
            self.next_int_below(n as i32) as i64
        } else {
            self.next_long().wrapping_rem(n).wrapping_abs()
        }
    }
}

/// Java's `Math.round(double)`.
fn java_round(x: f64) -> i64 {
    (x + 0.5).floor() as i64
}

fn next_price(random: &mut JavaRandom) -> i64 {
    java_round(10f64.powf(random.next_double() * 6.0) * 100.0)
}

/// A string of 3 to `max_length - 1` letters with some `special` characters,
/// trimmed of spaces at its ends.
fn next_string(random: &mut JavaRandom, max_length: i32, special: char) -> String {
    let length = 3 + random.next_int_below(max_length - 3);
    let mut text = String::with_capacity(length as usize);
    for _ in 0..length {
        if random.next_int_below(13) == 0 {
            text.push(special);
        } else {
            text.push((b'a' + random.next_int_below(26) as u8) as char);
        }
    }
    // Most strings have no space at either end: keep them without a copy.
    let trimmed = text.trim_matches(' ');
    if trimmed.len() == text.len() {
        text
    } else {
        trimmed.to_string()
    }
}

fn next_exact_string(random: &mut JavaRandom, length: i32) -> String {
    let mut text = String::with_capacity(length.max(0) as usize);
    let (mut rnd, mut left) = (0i32, 0);
    for _ in 0..length {
        if left == 0 {
            rnd = random.next_int();
            left = 6; // log_26(2^31)
        }
        // Java's remainder keeps the sign of a negative `rnd`.
        text.push((b'a' as i32 + rnd % 26) as u8 as char);
        rnd /= 26;
        left -= 1;
    }
    text
}

/// Padding that brings an event to `average` bytes on average.
fn next_extra(random: &mut JavaRandom, current: i32, average: i32) -> String {
    if current > average {
        return String::new();
    }
    let wanted = average - current;
    let delta = java_round(wanted as f64 * 0.2) as i32;
    let size = wanted - delta
        + if delta == 0 {
            0
        } else {
            random.next_int_below(2 * delta)
        };
    next_exact_string(random, size)
}

fn last_base0_person_id(event: u64) -> i64 {
    let epoch = event / TOTAL_PROPORTION;
    // Within an epoch, auctions and bids follow the epoch's last person.
    let offset = match event % TOTAL_PROPORTION {
        offset if offset < PERSON_PROPORTION => offset,
        _ => PERSON_PROPORTION - 1,
    };
    (epoch * PERSON_PROPORTION + offset) as i64
}

fn last_base0_auction_id(event: u64) -> i64 {
    let mut epoch = (event / TOTAL_PROPORTION) as i64;
    let mut offset = (event % TOTAL_PROPORTION) as i64;
    let (person, auction) = (PERSON_PROPORTION as i64, AUCTION_PROPORTION as i64);
    if offset < person {
        epoch -= 1;
        offset = auction - 1;
    } else if offset >= person + auction {
        offset = auction - 1;
    } else {
        offset -= person;
    }
    epoch * auction + offset
}

fn next_base0_person_id(event: u64, random: &mut JavaRandom) -> i64 {
    let people = last_base0_person_id(event) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + random.next_long_below(active + PERSON_ID_LEAD)
}

fn next_base0_auction_id(event: u64, random: &mut JavaRandom) -> i64 {
    let max = last_base0_auction_id(event);
    let min = (max - NUM_IN_FLIGHT_AUCTIONS).max(0);
    min + random.next_long_below(max - min + 1 + AUCTION_ID_LEAD)
}

/// What kind of event number `n` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Person,
    Auction,
    Bid,
}

impl EventKind {
    pub fn of(event: u64) -> Self {
        match event % TOTAL_PROPORTION {
            r if r < PERSON_PROPORTION => EventKind::Person,
            r if r < PERSON_PROPORTION + AUCTION_PROPORTION => EventKind::Auction,
            _ => EventKind::Bid,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: &'static str,
    pub state: &'static str,
    /// Event time, ms since the epoch.
    pub date_time: i64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: i64,
    pub reserve: i64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bid {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

/// The timeline and seed every event is derived from.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Event time of event 0, ms since the epoch.
    pub base_time_ms: i64,
    /// `1e6 / event rate`: event time between events, µs.
    pub inter_event_delay_us: f64,
    pub seed: i64,
    /// The URLs of the hot channels and of `channel-0 .. channel-9999`.
    hot_urls: Vec<String>,
    channel_urls: Vec<String>,
}

impl Timeline {
    pub fn new(base_time_ms: i64, events_per_second: u64, seed: i64) -> Self {
        let base_url = |salt: i64| {
            let mut random = JavaRandom::new(seed ^ salt);
            format!(
                "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
                next_string(&mut random, 5, '_'),
                next_string(&mut random, 5, '_'),
                next_string(&mut random, 5, '_')
            )
        };
        let hot_urls = (0..HOT_CHANNELS.len() as i64)
            .map(|i| base_url(-1 - i))
            .collect();
        let channel_urls = (0..CHANNELS_NUMBER)
            .map(|n| {
                let url = base_url(n as i64);
                if JavaRandom::new(seed ^ (n as i64) ^ 0x5EED).next_int_below(10) > 0 {
                    format!("{url}&channel_id={}", n.reverse_bits().wrapping_abs())
                } else {
                    url
                }
            })
            .collect();
        Self {
            base_time_ms,
            inter_event_delay_us: 1_000_000.0 / events_per_second.max(1) as f64,
            seed,
            hot_urls,
            channel_urls,
        }
    }

    /// Event time of event `n`, ms.
    pub fn timestamp_ms(&self, event: u64) -> i64 {
        self.base_time_ms + (event as f64 * self.inter_event_delay_us) as i64 / 1000
    }

    fn random_for(&self, event: u64) -> JavaRandom {
        JavaRandom::new(event as i64 ^ self.seed)
    }

    pub fn person(&self, event: u64) -> Person {
        let mut random = self.random_for(event);
        let first = FIRST_NAMES[random.next_int_below(FIRST_NAMES.len() as i32) as usize];
        let last = LAST_NAMES[random.next_int_below(LAST_NAMES.len() as i32) as usize];
        let name = format!("{first} {last}");
        let email_address = format!(
            "{}@{}.com",
            next_string(&mut random, 7, ' '),
            next_string(&mut random, 5, ' ')
        );
        let credit_card = (0..4)
            .map(|_| format!("{:04}", random.next_int_below(10_000)))
            .collect::<Vec<_>>()
            .join(" ");
        let city = US_CITIES[random.next_int_below(US_CITIES.len() as i32) as usize];
        let state = US_STATES[random.next_int_below(US_STATES.len() as i32) as usize];
        let size =
            8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
        let extra = next_extra(&mut random, size as i32, AVG_PERSON_BYTES);
        Person {
            id: last_base0_person_id(event) + FIRST_PERSON_ID,
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: self.timestamp_ms(event),
            extra,
        }
    }

    pub fn auction(&self, event: u64) -> Auction {
        let mut random = self.random_for(event);
        let timestamp = self.timestamp_ms(event);
        let seller = if random.next_int_below(HOT_SELLERS_DRAW) > 0 {
            (last_base0_person_id(event) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
        } else {
            next_base0_person_id(event, &mut random)
        } + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + random.next_int_below(NUM_CATEGORIES) as i64;
        let initial_bid = next_price(&mut random);
        // Auctions last on average until `numInFlightAuctions` more have
        // been created.
        let events_for_auctions =
            (NUM_IN_FLIGHT_AUCTIONS as u64 * TOTAL_PROPORTION) / AUCTION_PROPORTION;
        let horizon = self.timestamp_ms(event + events_for_auctions) - timestamp;
        let expires = timestamp + 1 + random.next_long_below((horizon * 2).max(1));
        let item_name = next_string(&mut random, 20, ' ');
        let description = next_string(&mut random, 100, ' ');
        let reserve = initial_bid + next_price(&mut random);
        let size = 8 + item_name.len() + description.len() + 8 * 5;
        let extra = next_extra(&mut random, size as i32, AVG_AUCTION_BYTES);
        Auction {
            id: last_base0_auction_id(event) + FIRST_AUCTION_ID,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time: timestamp,
            expires,
            seller,
            category,
            extra,
        }
    }

    pub fn bid(&self, event: u64) -> Bid {
        let mut random = self.random_for(event);
        let auction = if random.next_int_below(HOT_AUCTIONS_DRAW) > 0 {
            (last_base0_auction_id(event) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
        } else {
            next_base0_auction_id(event, &mut random)
        } + FIRST_AUCTION_ID;
        let bidder = if random.next_int_below(HOT_BIDDERS_DRAW) > 0 {
            (last_base0_person_id(event) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
        } else {
            next_base0_person_id(event, &mut random)
        } + FIRST_PERSON_ID;
        let price = next_price(&mut random);
        let (channel, url) = if random.next_int_below(HOT_CHANNELS_RATIO) > 0 {
            let i = random.next_int_below(HOT_CHANNELS.len() as i32) as usize;
            (HOT_CHANNELS[i].to_string(), self.hot_urls[i].clone())
        } else {
            let n = random.next_int_below(CHANNELS_NUMBER);
            (
                format!("channel-{n}"),
                self.channel_urls[n as usize].clone(),
            )
        };
        let extra = next_extra(&mut random, 32, AVG_BID_BYTES);
        Bid {
            auction,
            bidder,
            price,
            channel,
            url,
            date_time: self.timestamp_ms(event),
            extra,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of `new java.util.Random(42)`, printed by a JVM.
    #[test]
    fn java_random_matches_the_jvm() {
        let mut random = JavaRandom::new(42);
        assert_eq!(random.next_int(), -1170105035);
        assert_eq!(random.next_int_below(10), 3);
        assert_eq!(random.next_int_below(1 << 20), 716_411);
        let mut random = JavaRandom::new(42);
        assert_eq!(random.next_long(), -5025562857975149833);
        let mut random = JavaRandom::new(42);
        assert!((random.next_double() - 0.7275636800328681).abs() < 1e-15);
        let mut random = JavaRandom::new(12345);
        let mut sum: i64 = 0;
        for _ in 0..1000 {
            let draws = random.next_int_below(13) as i64
                + random.next_int_below(1000) as i64
                + random.next_int() as i64;
            sum = sum.wrapping_mul(31).wrapping_add(draws);
        }
        assert_eq!(sum, 3973481295402111504);
        assert_eq!(next_price(&mut JavaRandom::new(7)), 2422112);
    }

    #[test]
    fn proportions_ids_and_time() {
        let timeline = Timeline::new(0, 10_000, 0);
        let kinds: Vec<EventKind> = (0..50).map(EventKind::of).collect();
        assert_eq!(kinds.iter().filter(|k| **k == EventKind::Person).count(), 1);
        assert_eq!(
            kinds.iter().filter(|k| **k == EventKind::Auction).count(),
            3
        );
        assert_eq!(timeline.person(0).id, 1000);
        assert_eq!(timeline.person(50).id, 1001);
        assert_eq!(
            (1..4).map(|n| timeline.auction(n).id).collect::<Vec<_>>(),
            vec![1000, 1001, 1002]
        );
        // 10,000 events per second: event n is at n / 10 ms.
        assert_eq!(timeline.timestamp_ms(12_345), 1234);
        let bid = timeline.bid(4);
        assert_eq!(bid.date_time, 0);
        assert!(bid.price > 0 && bid.bidder >= 1000 && bid.auction >= 1000);
        for n in 0..5000u64 {
            if EventKind::of(n) == EventKind::Auction {
                let auction = timeline.auction(n);
                assert!(auction.expires > auction.date_time);
                assert!(auction.reserve >= auction.initial_bid);
                assert!((10..15).contains(&auction.category));
            }
        }
    }

    #[test]
    fn events_depend_only_on_their_number_and_seed() {
        let a = Timeline::new(0, 1000, 7);
        let b = Timeline::new(0, 1000, 7);
        let c = Timeline::new(0, 1000, 8);
        assert_eq!(a.bid(1234), b.bid(1234));
        assert_eq!(a.person(1250), b.person(1250));
        assert_ne!(a.bid(1234), c.bid(1234));
    }
}
