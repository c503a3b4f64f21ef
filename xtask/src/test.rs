use anyhow::Result;
#[derive(clap::Args)]
pub struct TestArgs {}
pub fn run(_a: TestArgs) -> Result<()> {
    Ok(())
}
