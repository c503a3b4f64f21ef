use anyhow::Result;
#[derive(clap::Args)]
pub struct DemoArgs {}
pub fn run(_a: DemoArgs) -> Result<()> {
    Ok(())
}
