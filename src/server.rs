//! `meshd serve`.

use anyhow::Result;

use crate::cli::ServeArgs;

pub async fn serve(_args: ServeArgs) -> Result<()> {
    anyhow::bail!("serve: being built")
}
