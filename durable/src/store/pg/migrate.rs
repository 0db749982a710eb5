//! Embedded, versioned migrations, applied under an advisory lock so that
//! processes starting together migrate once; also exportable as plain SQL.

use tokio_postgres::{Client, GenericClient};

use super::sql::Sql;
use crate::error::StoreError;

/// Applies the migrations this schema lacks, in one transaction holding a
/// transaction-level advisory lock keyed on the schema.
pub(crate) async fn migrate(client: &mut Client, sql: &Sql) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('corral_durable:' || $1::text))",
        &[&sql.schema],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
        s = sql.schema
    ))
    .await?;
    let row = tx
        .query_one(
            &format!(
                "SELECT COALESCE(max(version), 0) FROM {}.migrations",
                sql.schema
            ),
            &[],
        )
        .await?;
    let current: i32 = row.get(0);
    for (version, text) in sql.migrations() {
        if version <= current {
            continue;
        }
        tx.batch_execute(&text)
            .await
            .map_err(|e| StoreError::Migration(format!("version {version}: {e}")))?;
        tx.execute(
            &format!(
                "INSERT INTO {}.migrations (version) VALUES ($1)",
                sql.schema
            ),
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Fails with [`StoreError::SchemaBehind`] unless the schema has every
/// migration of this build. A newer schema (a newer build migrated it) is
/// accepted with a warning: migrations only add.
pub(crate) async fn check(client: &impl GenericClient, sql: &Sql) -> Result<(), StoreError> {
    let table = format!("{}.migrations", sql.schema);
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0);
    let found: i32 = if exists {
        client
            .query_one(
                &format!("SELECT COALESCE(max(version), 0) FROM {table}"),
                &[],
            )
            .await?
            .get(0)
    } else {
        0
    };
    let needed = sql.latest_migration();
    if found < needed {
        return Err(StoreError::SchemaBehind {
            schema: sql.schema.clone(),
            found,
            needed,
        });
    }
    if found > needed {
        tracing::warn!(
            schema = %sql.schema,
            found,
            needed,
            "corral-durable schema was migrated by a newer build"
        );
    }
    Ok(())
}

/// The whole schema as plain SQL, for teams that run their own migrations.
pub(crate) fn export(sql: &Sql) -> String {
    let mut out = format!(
        "-- corral-durable schema {s}\nCREATE SCHEMA IF NOT EXISTS {s};\n\
         CREATE TABLE IF NOT EXISTS {s}.migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());\n",
        s = sql.schema
    );
    for (version, text) in sql.migrations() {
        out.push_str(&format!("\n-- migration {version}\n{}\n", text.trim()));
        out.push_str(&format!(
            "INSERT INTO {}.migrations (version) VALUES ({version});\n",
            sql.schema
        ));
    }
    out
}
