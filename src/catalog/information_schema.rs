//! `information_schema` as PostgreSQL shapes it, for BI tools and drivers
//! that introspect through it: `schemata`, `tables`, `columns`, `views`.
//!
//! Built per query from the catalog (so it is always in step with it):
//! tables are `BASE TABLE`, materialized views `VIEW` (with their
//! definition in `views`); sources, which cannot be queried directly, and
//! the private views of sinks are left out. Column types are Postgres type
//! names (`integer`, `text`, `timestamp without time zone`, ...), positions
//! count from 1, and `is_nullable` follows NOT NULL / PRIMARY KEY.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::MemTable;

use crate::catalog::Relation;
use crate::common::pg_types::pg_type;
use crate::error::Result;

const CATALOG: &str = "eddy";

/// The `information_schema` of `relations`.
pub fn information_schema(relations: &[Relation]) -> Result<Arc<MemorySchemaProvider>> {
    let visible: Vec<&Relation> = relations.iter().filter(|r| r.listed_to_clients()).collect();
    let schema = Arc::new(MemorySchemaProvider::new());
    let register = |name: &str, batch: RecordBatch| -> Result<()> {
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        schema.register_table(name.to_string(), Arc::new(table))?;
        Ok(())
    };
    register("schemata", schemata()?)?;
    register("tables", tables(&visible)?)?;
    register("columns", columns(&visible)?)?;
    register("views", views(&visible)?)?;
    Ok(schema)
}

fn text_columns(names: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

fn text(values: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

fn schemata() -> Result<RecordBatch> {
    let names = ["public", "eddy_catalog", "information_schema"];
    Ok(RecordBatch::try_new(
        text_columns(&["catalog_name", "schema_name", "schema_owner"]),
        vec![
            text(names.iter().map(|_| Some(CATALOG.to_string())).collect()),
            text(names.iter().map(|n| Some(n.to_string())).collect()),
            text(names.iter().map(|_| Some("eddy".to_string())).collect()),
        ],
    )?)
}

fn tables(relations: &[&Relation]) -> Result<RecordBatch> {
    let kind = |r: &Relation| match r {
        Relation::Table(_) => "BASE TABLE",
        _ => "VIEW",
    };
    Ok(RecordBatch::try_new(
        text_columns(&["table_catalog", "table_schema", "table_name", "table_type"]),
        vec![
            text(relations.iter().map(|_| Some(CATALOG.into())).collect()),
            text(relations.iter().map(|_| Some("public".into())).collect()),
            text(
                relations
                    .iter()
                    .map(|r| Some(r.name().to_string()))
                    .collect(),
            ),
            text(
                relations
                    .iter()
                    .map(|r| Some(kind(r).to_string()))
                    .collect(),
            ),
        ],
    )?)
}

fn views(relations: &[&Relation]) -> Result<RecordBatch> {
    let views: Vec<_> = relations
        .iter()
        .filter_map(|r| match r {
            Relation::View(v) => Some(v),
            _ => None,
        })
        .collect();
    Ok(RecordBatch::try_new(
        text_columns(&[
            "table_catalog",
            "table_schema",
            "table_name",
            "view_definition",
        ]),
        vec![
            text(views.iter().map(|_| Some(CATALOG.into())).collect()),
            text(views.iter().map(|_| Some("public".into())).collect()),
            text(views.iter().map(|v| Some(v.name.clone())).collect()),
            text(views.iter().map(|v| Some(v.definition.clone())).collect()),
        ],
    )?)
}

/// `(data_type, udt_name, numeric_precision, numeric_scale)` as
/// PostgreSQL's information_schema spells them.
fn postgres_type(field: &Field) -> (String, String, Option<i32>, Option<i32>) {
    let udt = pg_type(field).name().to_string();
    let data_type = match udt.as_str() {
        "int2" => "smallint",
        "int4" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" => "double precision",
        "bool" => "boolean",
        "varchar" => "character varying",
        "bpchar" => "character",
        "timestamp" => "timestamp without time zone",
        "timestamptz" => "timestamp with time zone",
        "time" => "time without time zone",
        other => other,
    }
    .to_string();
    let (precision, scale) = match field.data_type() {
        DataType::Decimal128(p, s) => (Some(*p as i32), Some(*s as i32)),
        DataType::Int16 => (Some(16), Some(0)),
        DataType::Int32 => (Some(32), Some(0)),
        DataType::Int64 => (Some(64), Some(0)),
        DataType::Float32 => (Some(24), None),
        DataType::Float64 => (Some(53), None),
        _ => (None, None),
    };
    (data_type, udt, precision, scale)
}

fn columns(relations: &[&Relation]) -> Result<RecordBatch> {
    let mut rows: Vec<(&str, usize, &Field)> = Vec::new();
    for relation in relations {
        for (i, field) in relation.schema().fields().iter().enumerate() {
            rows.push((relation.name(), i + 1, field));
        }
    }
    let types: Vec<_> = rows.iter().map(|(_, _, f)| postgres_type(f)).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_catalog", DataType::Utf8, true),
        Field::new("table_schema", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("column_name", DataType::Utf8, true),
        Field::new("ordinal_position", DataType::Int32, true),
        Field::new("column_default", DataType::Utf8, true),
        Field::new("is_nullable", DataType::Utf8, true),
        Field::new("data_type", DataType::Utf8, true),
        Field::new("numeric_precision", DataType::Int32, true),
        Field::new("numeric_scale", DataType::Int32, true),
        Field::new("udt_name", DataType::Utf8, true),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            text(rows.iter().map(|_| Some(CATALOG.into())).collect()),
            text(rows.iter().map(|_| Some("public".into())).collect()),
            text(rows.iter().map(|(t, _, _)| Some(t.to_string())).collect()),
            text(
                rows.iter()
                    .map(|(_, _, f)| Some(f.name().clone()))
                    .collect(),
            ),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|(_, i, _)| *i as i32),
            )),
            text(rows.iter().map(|_| None).collect()),
            text(
                rows.iter()
                    .map(|(_, _, f)| Some(if f.is_nullable() { "YES" } else { "NO" }.into()))
                    .collect(),
            ),
            text(types.iter().map(|t| Some(t.0.clone())).collect()),
            Arc::new(Int32Array::from(
                types.iter().map(|t| t.2).collect::<Vec<_>>(),
            )),
            Arc::new(Int32Array::from(
                types.iter().map(|t| t.3).collect::<Vec<_>>(),
            )),
            text(types.iter().map(|t| Some(t.1.clone())).collect()),
        ],
    )?)
}
