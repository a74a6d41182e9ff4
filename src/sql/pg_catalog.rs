//! The part of `pg_catalog` that psql's list commands (`\d`, `\dt`, `\dm`,
//! `\dv`, `\dn`, `\l`, `\df`) and catalog-reading tools query, built per
//! query from eddy's catalog so it is always in step with it.
//!
//! Tables: `pg_namespace`, `pg_class` (tables as relkind `r`, materialized
//! views as `m`), `pg_attribute`, `pg_type`, `pg_database`, and empty
//! `pg_am`, `pg_description`, `pg_index`, `pg_proc`. Functions:
//! `pg_get_userbyid`, `pg_table_is_visible`, `pg_function_is_visible`,
//! `pg_get_function_result/arguments`, `pg_encoding_to_char`,
//! `format_type`, `obj_description`, `col_description`, `version`, each
//! also under its `pg_catalog.` name (DataFusion looks qualified function
//! names up as written), and a few built-ins under theirs. OIDs are stable: relation id + 16384.
//!
//! Not yet: what `\d <name>` needs beyond this (regclass casts,
//! `OPERATOR(pg_catalog.~)`, `pg_get_expr`, index and constraint details).

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::catalog::Relation;
use crate::error::Result;
use crate::pg_types::pg_type;

const PG_CATALOG_OID: i64 = 11;
const PUBLIC_OID: i64 = 2200;
const OWNER_OID: i64 = 10;
const FIRST_RELATION_OID: i64 = 16384;

/// The namespaces: (oid, name).
const NAMESPACES: [(i64, &str); 4] = [
    (PG_CATALOG_OID, "pg_catalog"),
    (PUBLIC_OID, "public"),
    (13000, "information_schema"),
    (13001, "eddy_catalog"),
];

/// The types eddy's columns can have: (oid, name, length).
const TYPES: [(i64, &str, i64); 14] = [
    (16, "bool", 1),
    (17, "bytea", -1),
    (20, "int8", 8),
    (21, "int2", 2),
    (23, "int4", 4),
    (25, "text", -1),
    (114, "json", -1),
    (700, "float4", 4),
    (701, "float8", 8),
    (1082, "date", 4),
    (1083, "time", 8),
    (1114, "timestamp", 8),
    (1184, "timestamptz", 8),
    (1700, "numeric", -1),
];

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn ints(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

fn table(columns: Vec<(&str, ArrayRef)>) -> Result<Arc<MemTable>> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// The `pg_catalog` schema for `relations`.
pub fn pg_catalog(relations: &[Relation]) -> Result<Arc<MemorySchemaProvider>> {
    let listed: Vec<&Relation> = relations.iter().filter(|r| r.listed_to_clients()).collect();
    let oid = |r: &Relation| FIRST_RELATION_OID + r.id() as i64;
    let schema = Arc::new(MemorySchemaProvider::new());
    let register = |name: &str, table: Arc<MemTable>| -> Result<()> {
        schema.register_table(name.to_string(), table)?;
        Ok(())
    };
    register(
        "pg_namespace",
        table(vec![
            ("oid", ints(NAMESPACES.iter().map(|n| n.0))),
            ("nspname", strings(NAMESPACES.iter().map(|n| n.1))),
            ("nspowner", ints(NAMESPACES.iter().map(|_| OWNER_OID))),
        ])?,
    )?;
    let n = listed.len();
    register(
        "pg_class",
        table(vec![
            ("oid", ints(listed.iter().map(|r| oid(r)))),
            ("relname", strings(listed.iter().map(|r| r.name()))),
            ("relnamespace", ints(listed.iter().map(|_| PUBLIC_OID))),
            (
                "relkind",
                strings(listed.iter().map(|r| match r {
                    Relation::Table(_) => "r",
                    _ => "m",
                })),
            ),
            ("relowner", ints(listed.iter().map(|_| OWNER_OID))),
            ("relam", ints(listed.iter().map(|_| 0))),
            ("reltuples", ints(listed.iter().map(|_| -1))),
            ("relhasindex", Arc::new(BooleanArray::from(vec![false; n]))),
            ("relpersistence", strings(listed.iter().map(|_| "p"))),
            (
                "relispartition",
                Arc::new(BooleanArray::from(vec![false; n])),
            ),
            ("reltablespace", ints(listed.iter().map(|_| 0))),
        ])?,
    )?;
    let columns: Vec<(i64, usize, &Field)> = listed
        .iter()
        .flat_map(|r| {
            r.schema()
                .fields()
                .iter()
                .enumerate()
                .map(move |(i, f)| (oid(r), i + 1, f.as_ref()))
        })
        .collect();
    let type_oid = |f: &Field| pg_type(f).oid() as i64;
    register(
        "pg_attribute",
        table(vec![
            ("attrelid", ints(columns.iter().map(|c| c.0))),
            (
                "attname",
                strings(columns.iter().map(|c| c.2.name().as_str())),
            ),
            ("atttypid", ints(columns.iter().map(|c| type_oid(c.2)))),
            ("attnum", ints(columns.iter().map(|c| c.1 as i64))),
            (
                "attnotnull",
                Arc::new(BooleanArray::from_iter(
                    columns.iter().map(|c| Some(!c.2.is_nullable())),
                )),
            ),
            (
                "attisdropped",
                Arc::new(BooleanArray::from(vec![false; columns.len()])),
            ),
            ("atttypmod", ints(columns.iter().map(|_| -1))),
            (
                "attlen",
                ints(columns.iter().map(|c| {
                    TYPES
                        .iter()
                        .find(|t| t.0 == type_oid(c.2))
                        .map_or(-1, |t| t.2)
                })),
            ),
            (
                "atthasdef",
                Arc::new(BooleanArray::from(vec![false; columns.len()])),
            ),
            ("attidentity", strings(columns.iter().map(|_| ""))),
            ("attgenerated", strings(columns.iter().map(|_| ""))),
        ])?,
    )?;
    register(
        "pg_type",
        table(vec![
            ("oid", ints(TYPES.iter().map(|t| t.0))),
            ("typname", strings(TYPES.iter().map(|t| t.1))),
            ("typnamespace", ints(TYPES.iter().map(|_| PG_CATALOG_OID))),
            ("typlen", ints(TYPES.iter().map(|t| t.2))),
            ("typtype", strings(TYPES.iter().map(|_| "b"))),
            ("typbasetype", ints(TYPES.iter().map(|_| 0))),
            ("typtypmod", ints(TYPES.iter().map(|_| -1))),
            (
                "typnotnull",
                Arc::new(BooleanArray::from(vec![false; TYPES.len()])),
            ),
            ("typelem", ints(TYPES.iter().map(|_| 0))),
            ("typarray", ints(TYPES.iter().map(|_| 0))),
            ("typdelim", strings(TYPES.iter().map(|_| ","))),
            ("typrelid", ints(TYPES.iter().map(|_| 0))),
        ])?,
    )?;
    register(
        "pg_database",
        table(vec![
            ("oid", ints([16383])),
            ("datname", strings(["eddy"])),
            ("datdba", ints([OWNER_OID])),
            ("encoding", ints([6])),
            ("datcollate", strings(["C"])),
            ("datctype", strings(["C"])),
            ("daticulocale", new_null_array(&DataType::Utf8, 1)),
            ("datlocprovider", strings(["c"])),
            (
                "datacl",
                new_null_array(
                    &DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                    1,
                ),
            ),
        ])?,
    )?;
    let empty = |names: &[(&str, DataType)]| {
        table(
            names
                .iter()
                .map(|(name, t)| (*name, new_null_array(t, 0)))
                .collect(),
        )
    };
    register(
        "pg_am",
        empty(&[("oid", DataType::Int64), ("amname", DataType::Utf8)])?,
    )?;
    register(
        "pg_attrdef",
        empty(&[
            ("oid", DataType::Int64),
            ("adrelid", DataType::Int64),
            ("adnum", DataType::Int64),
            ("adbin", DataType::Utf8),
        ])?,
    )?;
    register(
        "pg_description",
        empty(&[
            ("objoid", DataType::Int64),
            ("classoid", DataType::Int64),
            ("objsubid", DataType::Int32),
            ("description", DataType::Utf8),
        ])?,
    )?;
    register(
        "pg_index",
        empty(&[
            ("indexrelid", DataType::Int64),
            ("indrelid", DataType::Int64),
            ("indisprimary", DataType::Boolean),
            ("indisunique", DataType::Boolean),
        ])?,
    )?;
    register(
        "pg_proc",
        empty(&[
            ("oid", DataType::Int64),
            ("proname", DataType::Utf8),
            ("pronamespace", DataType::Int64),
            ("prokind", DataType::Utf8),
        ])?,
    )?;
    Ok(schema)
}

/// A catalog function with a fixed answer shape.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CatalogFunction {
    name: String,
    signature: Signature,
    returns: DataType,
}

impl ScalarUDFImpl for CatalogFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let base = self.name.trim_start_matches("pg_catalog.");
        let value = match base {
            "pg_get_userbyid" => ScalarValue::Utf8(Some("eddy".into())),
            "pg_table_is_visible" | "pg_function_is_visible" => ScalarValue::Boolean(Some(true)),
            "pg_get_function_result" | "pg_get_function_arguments" => ScalarValue::Utf8(None),
            "pg_encoding_to_char" => ScalarValue::Utf8(Some("UTF8".into())),
            "current_database" => ScalarValue::Utf8(Some("eddy".into())),
            "current_schema" => ScalarValue::Utf8(Some("public".into())),
            "obj_description" | "col_description" | "pg_get_expr" => ScalarValue::Utf8(None),
            "current_schemas" => ScalarValue::List(ScalarValue::new_list_nullable(
                &[
                    ScalarValue::Utf8(Some("pg_catalog".into())),
                    ScalarValue::Utf8(Some("public".into())),
                ],
                &DataType::Utf8,
            )),
            "version" => ScalarValue::Utf8(Some(format!(
                "PostgreSQL 15.0 (eddy {})",
                env!("CARGO_PKG_VERSION")
            ))),
            "to_regtype" => {
                // to_regtype(name): the type's OID, or NULL.
                let names = args.args[0].clone().into_array(args.number_rows)?;
                let names = datafusion::arrow::compute::cast(&names, &DataType::Utf8)?;
                let names = names
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8");
                let oids: Int64Array = names
                    .iter()
                    .map(|name| name.and_then(|n| TYPES.iter().find(|t| t.1 == n).map(|t| t.0)))
                    .collect();
                return Ok(ColumnarValue::Array(Arc::new(oids)));
            }
            "format_type" => {
                // format_type(type oid, typmod): the type's SQL name.
                let oids = args.args[0].clone().into_array(args.number_rows)?;
                let oids = datafusion::arrow::compute::cast(&oids, &DataType::Int64)?;
                let oids = oids
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("cast to Int64");
                let names: StringArray = oids.iter().map(|oid| oid.map(type_sql_name)).collect();
                return Ok(ColumnarValue::Array(Arc::new(names)));
            }
            other => {
                return Err(datafusion::error::DataFusionError::Internal(format!(
                    "catalog function {other} has no body"
                )))
            }
        };
        Ok(ColumnarValue::Scalar(value))
    }
}

fn type_sql_name(oid: i64) -> String {
    match oid {
        16 => "boolean",
        17 => "bytea",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1082 => "date",
        1083 => "time without time zone",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1700 => "numeric",
        _ => "???",
    }
    .to_string()
}

/// Registers the catalog functions in `state`.
pub fn register_functions(state: &mut SessionState) -> Result<()> {
    let functions: [(&str, usize, DataType); 15] = [
        ("to_regtype", 1, DataType::Int64),
        ("pg_get_expr", 2, DataType::Utf8),
        (
            "current_schemas",
            1,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        ),
        ("current_database", 0, DataType::Utf8),
        ("current_schema", 0, DataType::Utf8),
        ("pg_get_userbyid", 1, DataType::Utf8),
        ("pg_table_is_visible", 1, DataType::Boolean),
        ("pg_function_is_visible", 1, DataType::Boolean),
        ("pg_get_function_result", 1, DataType::Utf8),
        ("pg_get_function_arguments", 1, DataType::Utf8),
        ("pg_encoding_to_char", 1, DataType::Utf8),
        ("format_type", 2, DataType::Utf8),
        ("obj_description", 2, DataType::Utf8),
        ("col_description", 2, DataType::Utf8),
        ("version", 0, DataType::Utf8),
    ];
    for (name, arity, returns) in functions {
        for name in [name.to_string(), format!("pg_catalog.{name}")] {
            let function = CatalogFunction {
                name,
                signature: if arity == 0 {
                    Signature::nullary(Volatility::Stable)
                } else {
                    Signature::any(arity, Volatility::Stable)
                },
                returns: returns.clone(),
            };
            state.register_udf(Arc::new(ScalarUDF::new_from_impl(function)))?;
        }
    }
    // Built-in functions psql calls by their pg_catalog. name.
    for (name, qualified) in [
        ("array_to_string", "pg_catalog.array_to_string"),
        ("lower", "pg_catalog.lower"),
        ("upper", "pg_catalog.upper"),
        ("length", "pg_catalog.length"),
        ("concat", "pg_catalog.concat"),
        ("regexp_replace", "pg_catalog.regexp_replace"),
    ] {
        if let Some(builtin) = state.scalar_functions().get(name).cloned() {
            state.register_udf(Arc::new(builtin.as_ref().clone().with_aliases([qualified])))?;
        }
    }
    Ok(())
}

/// The OID `'name'::regclass` stands for: the catalog tables psql and
/// drivers name, or a relation of eddy's.
fn regclass_oid(name: &str, catalog: &crate::catalog::Catalog) -> Option<i64> {
    let name = name.trim_matches('"');
    let name = name.strip_prefix("pg_catalog.").unwrap_or(name);
    let name = name.strip_prefix("public.").unwrap_or(name);
    match name {
        "pg_class" => Some(1259),
        "pg_type" => Some(1247),
        "pg_attribute" => Some(1249),
        "pg_proc" => Some(1255),
        "pg_namespace" => Some(2615),
        "pg_database" => Some(1262),
        "pg_description" => Some(2609),
        "pg_index" => Some(2610),
        "pg_am" => Some(2601),
        _ => catalog
            .get(name)
            .map(|r| FIRST_RELATION_OID + r.id() as i64),
    }
}

/// Rewrites what DataFusion cannot plan but Postgres clients send:
/// `'name'::regclass` becomes the relation's OID (an unknown name is
/// Postgres' error 42P01), `expr::regclass` the OID as a number, and the bare
/// words `current_catalog`, `current_user`, `session_user` their values.
pub fn rewrite_regclass(
    statement: &mut datafusion::sql::sqlparser::ast::Statement,
    catalog: &crate::catalog::Catalog,
) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{self, visit_expressions_mut, Expr};
    use std::ops::ControlFlow;
    let flow = visit_expressions_mut(statement, |expr| {
        // Postgres' parameterless "functions" spelled as bare words (the
        // parser gives them as functions without an argument list).
        let bare_word = match &*expr {
            Expr::Identifier(ident) if ident.quote_style.is_none() => Some(ident.value.clone()),
            Expr::Function(function) if matches!(function.args, ast::FunctionArguments::None) => {
                Some(function.name.to_string())
            }
            _ => None,
        };
        if let Some(word) = bare_word {
            if let "current_catalog" | "current_user" | "session_user" =
                word.to_lowercase().as_str()
            {
                *expr = Expr::value(ast::Value::SingleQuotedString("eddy".into()));
            }
            return ControlFlow::Continue(());
        }
        let Expr::Cast {
            data_type,
            expr: inner,
            ..
        } = expr
        else {
            return ControlFlow::Continue(());
        };
        // The OID alias types: regclass, and regtype & co. by name.
        let alias = match data_type {
            ast::DataType::Regclass => "regclass".to_string(),
            ast::DataType::Custom(name, _) => name.to_string().to_lowercase(),
            _ => return ControlFlow::Continue(()),
        };
        let alias = alias.trim_start_matches("pg_catalog.");
        if !matches!(
            alias,
            "regclass"
                | "regtype"
                | "regproc"
                | "regprocedure"
                | "regnamespace"
                | "regrole"
                | "oid"
        ) {
            return ControlFlow::Continue(());
        }
        let replacement = match inner.as_ref() {
            Expr::Value(value) => match (&value.value, alias) {
                (ast::Value::SingleQuotedString(name), "regclass") => {
                    match regclass_oid(name, catalog) {
                        Some(oid) => Expr::value(ast::Value::Number(oid.to_string(), false)),
                        None => {
                            return ControlFlow::Break(crate::error::EddyError::UndefinedRelation(
                                format!("relation \"{name}\" does not exist"),
                            ))
                        }
                    }
                }
                (ast::Value::SingleQuotedString(name), "regtype") => {
                    match TYPES.iter().find(|t| t.1 == name.as_str()) {
                        Some(t) => Expr::value(ast::Value::Number(t.0.to_string(), false)),
                        None => {
                            return ControlFlow::Break(crate::error::EddyError::UndefinedRelation(
                                format!("type \"{name}\" does not exist"),
                            ))
                        }
                    }
                }
                _ => return ControlFlow::Continue(()),
            },
            other => Expr::Cast {
                kind: ast::CastKind::DoubleColon,
                expr: Box::new(other.clone()),
                data_type: ast::DataType::BigInt(None),
                array: false,
                format: None,
            },
        };
        *expr = replacement;
        ControlFlow::Continue(())
    });
    if let ControlFlow::Break(error) = flow {
        return Err(error);
    }
    // pg_catalog is on every search path: unqualified pg_* tables are its.
    let _ = ast::visit_relations_mut(statement, |name| {
        if let [part] = name.0.as_slice() {
            if let Some(ident) = part.as_ident() {
                let table = ident.value.to_lowercase();
                if ident.quote_style.is_none() && CATALOG_TABLES.contains(&table.as_str()) {
                    *name = ast::ObjectName::from(vec![
                        ast::Ident::new("pg_catalog"),
                        ast::Ident::new(table),
                    ]);
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

/// The tables [`pg_catalog`] provides.
const CATALOG_TABLES: [&str; 11] = [
    "pg_namespace",
    "pg_class",
    "pg_attribute",
    "pg_type",
    "pg_database",
    "pg_am",
    "pg_attrdef",
    "pg_description",
    "pg_index",
    "pg_proc",
    "pg_settings",
];
