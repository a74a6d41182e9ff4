//! Criterion micro-benchmarks of the hot paths, each beside a baseline that
//! does the least work the same input needs, in the same run (the ratio
//! eddy / baseline is the figure to track; absolute times move with the
//! machine's load):
//!
//! - `changelog`: 4,096 JSON Nexmark bid payloads to a change batch (the
//!   Kafka source's decode: eddy's one-pass decoder with all columns built
//!   and with q1's four, and the arrow-json path it falls back to), against
//!   arrow-json decoding the same payloads;
//! - `aggregate`: `count(*), sum(price) GROUP BY auction` over a batch of
//!   insertions and then its retraction, against a `HashMap` fold of the
//!   same columns;
//! - `window`: TUMBLE and HOP window assignment of a batch, against one
//!   arrow `take` of the batch (the copy every assignment makes);
//! - `join`: a batch of bids probing 10,000 auctions' rows (inner join on
//!   the auction id), against a `HashMap` probe of the same keys;
//! - `session`: `count(*) GROUP BY bidder, window_start, window_end` over
//!   `SESSION(bids, date_time, 10 s, bidder)` for 10 batches of bids of
//!   1,000 bidders (sessions grow over all of them), as the general plan
//!   (SessionWindow, then the aggregate) and as the session aggregate an
//!   append-only input gets, against a `HashMap` count per bidder;
//! - `state`: a view's row set taking a batch (the published snapshot's
//!   copy-on-write map), and a checkpoint of an aggregate's 10,000 groups,
//!   against a `BTreeMap` insert of the same encoded rows.
//!
//! `cargo bench --bench hot_paths` (criterion's options after `--`, e.g.
//! `-- aggregate`).

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::JoinType;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;

use eddy::common::ChangeBatch;
use eddy::connectors::format::MessageEncoding;
use eddy::connectors::kafka::decode::PayloadDecoder;
use eddy::connectors::nexmark::NexmarkConfig;
use eddy::connectors::policy::ConnectorPolicy;
use eddy::state::checkpoint::StateDelta;
use eddy::state::{RowCodec, RowSet};
use eddy::stream::accumulator::{AggregateFolder, AggregateKind};
use eddy::stream::aggregate::{AggregateCall, AggregateOperator, WindowedGroups};
use eddy::stream::join::{JoinOperator, JoinSide};
use eddy::stream::session::{SessionSpec, SessionWindowOperator};
use eddy::stream::session_aggregate::{
    SessionAggregateOperator, SessionClosing, SessionGroupColumn,
};
use eddy::stream::shard::ShardedOperator;
use eddy::stream::window::{windowed_schema, WindowAssignOperator, WindowSpec};
use eddy::stream::Operator;

/// Rows per batch: the Kafka source's largest batch.
const ROWS: usize = 4096;
const AUCTIONS: i64 = 10_000;

fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ]))
}

/// Bids spread over the auctions, 1 ms of event time apart (a fixed LCG,
/// so every run sees the same rows).
fn bids(rows: usize, seed: u64) -> RecordBatch {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as i64
    };
    let auction: Vec<i64> = (0..rows).map(|_| next() % AUCTIONS).collect();
    let bidder: Vec<i64> = (0..rows).map(|_| next() % 100_000).collect();
    let price: Vec<i64> = (0..rows).map(|_| 100 + next() % 10_000).collect();
    let channel: Vec<&str> = (0..rows)
        .map(|i| ["Google", "Facebook", "Baidu", "Apple"][i % 4])
        .collect();
    let time: Vec<i64> = (0..rows as i64)
        .map(|i| 1_700_000_000_000_000 + i * 1_000)
        .collect();
    RecordBatch::try_new(
        bid_schema(),
        vec![
            Arc::new(Int64Array::from(auction)),
            Arc::new(Int64Array::from(bidder)),
            Arc::new(Int64Array::from(price)),
            Arc::new(StringArray::from(channel)),
            Arc::new(TimestampMicrosecondArray::from(time)),
        ],
    )
    .expect("bids")
}

fn insertions(rows: RecordBatch) -> ChangeBatch {
    let n = rows.num_rows();
    ChangeBatch::new(rows, Int64Array::from(vec![1; n])).expect("change")
}

fn retractions(rows: RecordBatch) -> ChangeBatch {
    let n = rows.num_rows();
    ChangeBatch::new(rows, Int64Array::from(vec![-1; n])).expect("change")
}

fn column(name: &str, schema: &Schema) -> Arc<dyn PhysicalExpr> {
    Arc::new(Column::new(name, schema.index_of(name).expect("column")))
}

fn int64s(batch: &RecordBatch, index: usize) -> &Int64Array {
    batch
        .column(index)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("int64")
}

/// JSON payloads to a change batch, as the Kafka source decodes a poll:
/// 4,096 Nexmark bids as the benchmark's Kafka topics hold them (arrow's
/// JSON writer, the long `extra` string included).
fn changelog(c: &mut Criterion) {
    let options = BTreeMap::from([
        ("connector".to_string(), "nexmark".to_string()),
        ("nexmark.table.type".to_string(), "bid".to_string()),
    ]);
    let generator = NexmarkConfig::from_options("bid", &[], &options).expect("nexmark");
    // Bids are 46 of each 50 events: 5,000 events hold more than a batch.
    let rows = generator.rows(0, 5_000).expect("bids");
    let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(&rows).expect("json");
    writer.finish().expect("json");
    let lines = writer.into_inner();
    let slices: Vec<&[u8]> = lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .take(ROWS)
        .collect();
    let schema = rows.schema();
    let decoder = PayloadDecoder::try_new(
        MessageEncoding::Json,
        schema.clone(),
        &BTreeMap::new(),
        &ConnectorPolicy::default(),
    )
    .expect("decoder");
    let arrow_json = decoder.clone().with_arrow_json();
    // q1's columns: auction, bidder, price, date_time.
    let q1_columns: Vec<bool> = schema
        .fields()
        .iter()
        .map(|f| ["auction", "bidder", "price", "date_time"].contains(&f.name().as_str()))
        .collect();
    let mut group = c.benchmark_group("changelog");
    group.throughput(Throughput::Elements(slices.len() as u64));
    group.bench_function("baseline: arrow-json decode", |b| {
        b.iter(|| {
            let mut json = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(ROWS)
                .build_decoder()
                .expect("decoder");
            for payload in &slices {
                json.decode(payload).expect("decode");
            }
            black_box(json.flush().expect("flush"))
        })
    });
    group.bench_function(
        "eddy: JSON payloads to a change batch, through arrow-json",
        |b| {
            b.iter(|| {
                let decoded = arrow_json.decode(black_box(&slices), None).expect("decode");
                black_box(insertions(decoded.rows))
            })
        },
    );
    group.bench_function("eddy: JSON payloads to a change batch", |b| {
        b.iter(|| {
            let decoded = decoder.decode(black_box(&slices), None).expect("decode");
            black_box(insertions(decoded.rows))
        })
    });
    group.bench_function(
        "eddy: JSON payloads to a change batch, q1's 4 columns built",
        |b| {
            b.iter(|| {
                let decoded = decoder
                    .decode(black_box(&slices), Some(&q1_columns))
                    .expect("decode");
                black_box(insertions(decoded.rows))
            })
        },
    );
    group.finish();
}

fn count_and_sum_by_auction() -> AggregateOperator {
    let input = bid_schema();
    let output = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bids", DataType::Int64, false),
        Field::new("total", DataType::Int64, true),
    ]));
    let call = |kind, output_type: DataType, display: &str| AggregateCall {
        folder: AggregateFolder::try_new(kind, &DataType::Int64, output_type, &[], None)
            .expect("folder"),
        argument: column("price", &input),
        filter: None,
        display: display.to_string(),
    };
    AggregateOperator::try_new(
        vec![column("auction", &input)],
        vec![
            call(AggregateKind::Count, DataType::Int64, "count(*)"),
            call(AggregateKind::Sum, DataType::Int64, "sum(price)"),
        ],
        output,
    )
    .expect("aggregate")
}

/// Hash aggregation of insertions, then of their retraction.
fn aggregate(c: &mut Criterion) {
    let rows = bids(ROWS, 2);
    let mut group = c.benchmark_group("aggregate");
    group.throughput(Throughput::Elements(2 * ROWS as u64));
    group.bench_function("baseline: HashMap fold", |b| {
        b.iter(|| {
            let mut groups: HashMap<i64, (i64, i64)> = HashMap::new();
            for weight in [1, -1] {
                let (auction, price) = (int64s(&rows, 0), int64s(&rows, 2));
                for i in 0..rows.num_rows() {
                    let group = groups.entry(auction.value(i)).or_default();
                    group.0 += weight;
                    group.1 += weight * price.value(i);
                    if group.0 == 0 {
                        groups.remove(&auction.value(i));
                    }
                }
            }
            black_box(groups)
        })
    });
    // One operator for all iterations: each retracts what it inserted, so
    // every iteration starts from empty groups. The second is the same fold
    // split into two shards by key hash, on two threads (`--workers 2`).
    let one: Box<dyn Operator> = Box::new(count_and_sum_by_auction());
    let two: Box<dyn Operator> = Box::new(
        ShardedOperator::try_new(vec![count_and_sum_by_auction(), count_and_sum_by_auction()])
            .expect("shards"),
    );
    for (name, mut op) in [
        ("eddy: insert then retract, with output changes", one),
        ("eddy: the same, 2 shards on 2 threads", two),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let inserted = op.process(0, insertions(rows.clone())).expect("insert");
                let retracted = op.process(0, retractions(rows.clone())).expect("retract");
                black_box((inserted, retracted))
            })
        });
    }
    group.finish();
}

/// TUMBLE and HOP window assignment.
fn window(c: &mut Criterion) {
    let rows = bids(ROWS, 3);
    let time = 4;
    let schema = windowed_schema(&bid_schema(), time);
    let second = 1_000_000;
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("baseline: take of every row", |b| {
        let indices = UInt32Array::from_iter_values(0..ROWS as u32);
        b.iter(|| black_box(take_record_batch(&rows, &indices).expect("take")))
    });
    for (name, spec) in [
        ("eddy: TUMBLE 10 s", WindowSpec::tumble(10 * second, 0)),
        (
            "eddy: HOP 2 s / 10 s (5 windows a row)",
            WindowSpec::hop(2 * second, 10 * second),
        ),
    ] {
        let spec = spec.expect("window");
        let mut op = WindowAssignOperator::new(time, "date_time".into(), spec, schema.clone(), 0);
        group.bench_function(name, |b| {
            b.iter(|| black_box(op.process(0, insertions(rows.clone())).expect("assign")))
        });
    }
    group.finish();
}

/// Batch `n` of a stream of bids of 1,000 bidders, 1 ms apart.
fn session_bids(n: usize) -> RecordBatch {
    let rows = bids(ROWS, 10 + n as u64);
    let bidder = Int64Array::from_iter_values(int64s(&rows, 1).values().iter().map(|b| b % 1_000));
    let shift = (n * ROWS) as i64 * 1_000;
    let time = rows
        .column(4)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("time")
        .values()
        .iter()
        .map(|t| t + shift);
    let mut columns = rows.columns().to_vec();
    columns[1] = Arc::new(bidder);
    columns[4] = Arc::new(TimestampMicrosecondArray::from_iter_values(time));
    RecordBatch::try_new(bid_schema(), columns).expect("session bids")
}

/// Sessions per bidder counted, as two operators and as one.
fn session(c: &mut Criterion) {
    const BATCHES: usize = 10;
    let batches: Vec<RecordBatch> = (0..BATCHES).map(session_bids).collect();
    let input = bid_schema();
    let (time, bidder, gap) = (4, 1, 10_000_000);
    let windowed = windowed_schema(&input, time);
    let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
    let output = Arc::new(Schema::new(vec![
        Field::new("bidder", DataType::Int64, false),
        Field::new("window_start", timestamp.clone(), false),
        Field::new("window_end", timestamp, false),
        Field::new("bids", DataType::Int64, false),
    ]));
    let count = |schema: &Schema| AggregateCall {
        folder: AggregateFolder::try_new(
            AggregateKind::Count,
            &DataType::Int64,
            DataType::Int64,
            &[],
            None,
        )
        .expect("folder"),
        argument: column("price", schema),
        filter: None,
        display: "count(*)".into(),
    };
    let pair = || -> Vec<Box<dyn Operator>> {
        let session = SessionWindowOperator::try_new(
            input.clone(),
            SessionSpec {
                time_column: time,
                key_columns: vec![bidder],
                gap,
            },
            0,
            windowed.clone(),
            true,
        )
        .expect("session");
        let groups = ["bidder", "window_start", "window_end"]
            .map(|name| column(name, &windowed))
            .to_vec();
        let aggregate = AggregateOperator::try_new(groups, vec![count(&windowed)], output.clone())
            .expect("aggregate")
            .with_window(WindowedGroups {
                end_key: 2,
                allowed_lateness: 0,
                emit_on_close: false,
                watermarked: true,
            });
        vec![Box::new(session), Box::new(aggregate)]
    };
    let fused = || -> Vec<Box<dyn Operator>> {
        let op = SessionAggregateOperator::try_new(
            input.clone(),
            SessionSpec {
                time_column: time,
                key_columns: vec![bidder],
                gap,
            },
            SessionClosing {
                allowed_lateness: 0,
                emit_on_close: false,
                watermarked: true,
            },
            vec![count(&input)],
            vec![
                SessionGroupColumn::Key(0),
                SessionGroupColumn::WindowStart,
                SessionGroupColumn::WindowEnd,
            ],
            output.clone(),
        )
        .expect("session aggregate");
        vec![Box::new(op)]
    };
    let mut group = c.benchmark_group("session");
    group.throughput(Throughput::Elements((BATCHES * ROWS) as u64));
    group.bench_function("baseline: HashMap count per bidder", |b| {
        b.iter(|| {
            let mut counts: HashMap<i64, i64> = HashMap::new();
            for rows in &batches {
                for b in int64s(rows, 1).values() {
                    *counts.entry(*b).or_default() += 1;
                }
            }
            black_box(counts)
        })
    });
    for (name, make) in [
        (
            "eddy: SessionWindow then the aggregate",
            &pair as &dyn Fn() -> _,
        ),
        ("eddy: session aggregate (append-only input)", &fused),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                make,
                |mut chain| {
                    for rows in &batches {
                        let mut changes = vec![insertions(rows.clone())];
                        for op in chain.iter_mut() {
                            let mut next = Vec::new();
                            for batch in changes {
                                next.extend(op.process(0, batch).expect("process"));
                            }
                            changes = next;
                        }
                        black_box(changes);
                    }
                    chain
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn auctions(count: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
    ]));
    let ids: Vec<i64> = (0..count).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 1_000))),
            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 10))),
        ],
    )
    .expect("auctions")
}

/// A batch of bids probing the auctions' join state.
fn join(c: &mut Criterion) {
    let auction_rows = auctions(AUCTIONS);
    let bid_rows = bids(ROWS, 4);
    let (auction_schema, bid_schema) = (auction_rows.schema(), bid_schema());
    let output = Arc::new(Schema::new(
        auction_schema
            .fields()
            .iter()
            .chain(bid_schema.fields().iter())
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let make = || {
        JoinOperator::try_new(
            JoinType::Inner,
            JoinSide {
                keys: vec![column("id", &auction_schema)],
                schema: auction_schema.clone(),
            },
            JoinSide {
                keys: vec![column("auction", &bid_schema)],
                schema: bid_schema.clone(),
            },
            None,
            false,
            output.clone(),
            None,
            "Join: auction.id = bid.auction".into(),
        )
        .expect("join")
    };
    let mut op: Box<dyn Operator> = Box::new(make());
    // The same join split into two shards by key hash, on two threads
    // (`--workers 2`).
    let mut sharded: Box<dyn Operator> =
        Box::new(ShardedOperator::try_new(vec![make(), make()]).expect("shards"));
    for join in [&mut op, &mut sharded] {
        join.process(0, insertions(auction_rows.clone()))
            .expect("auctions");
    }
    let mut group = c.benchmark_group("join");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("baseline: HashMap probe", |b| {
        let ids = int64s(&auction_rows, 0);
        let by_id: HashMap<i64, usize> = (0..ids.len()).map(|i| (ids.value(i), i)).collect();
        b.iter(|| {
            let probes = int64s(&bid_rows, 0);
            let matched: Vec<usize> = (0..probes.len())
                .filter_map(|i| by_id.get(&probes.value(i)).copied())
                .collect();
            black_box(matched)
        })
    });
    for (name, op) in [
        ("eddy: probe and insert, then retract", &mut op),
        ("eddy: the same, 2 shards on 2 threads", &mut sharded),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let joined = op.process(1, insertions(bid_rows.clone())).expect("probe");
                let undone = op
                    .process(1, retractions(bid_rows.clone()))
                    .expect("retract");
                black_box((joined, undone))
            })
        });
    }
    group.finish();
}

/// A view's row set taking a batch, and a checkpoint of aggregate state.
fn state(c: &mut Criterion) {
    let rows = bids(ROWS, 5);
    let codec = Arc::new(RowCodec::try_new(bid_schema()).expect("codec"));
    let encoded = codec.encode(&rows).expect("encode");
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("baseline: BTreeMap insert of the encoded rows", |b| {
        b.iter(|| {
            let mut map: BTreeMap<Arc<[u8]>, i64> = BTreeMap::new();
            for row in &encoded {
                *map.entry(row.clone()).or_default() += 1;
            }
            black_box(map)
        })
    });
    let mut view = RowSet::new(codec.clone());
    for seed in 10..20 {
        view.apply(&insertions(bids(ROWS, seed))).expect("fill");
    }
    group.bench_function("eddy: view row set (40k rows) takes a batch", |b| {
        b.iter_batched(
            || view.clone(),
            |mut view| {
                view.apply_returning_rows(&insertions(rows.clone()))
                    .expect("apply");
                black_box(view)
            },
            BatchSize::SmallInput,
        )
    });
    let mut aggregate = count_and_sum_by_auction();
    for seed in 20..40 {
        aggregate
            .process(0, insertions(bids(ROWS, seed)))
            .expect("fill");
    }
    group.throughput(Throughput::Elements(AUCTIONS as u64));
    group.bench_function("eddy: full checkpoint of 10k aggregate groups", |b| {
        b.iter(|| {
            let mut delta = StateDelta::new(true);
            aggregate.checkpoint(&mut delta).expect("checkpoint");
            black_box(delta)
        })
    });
    group.finish();
}

criterion_group!(hot_paths, changelog, aggregate, window, join, session, state);
criterion_main!(hot_paths);
