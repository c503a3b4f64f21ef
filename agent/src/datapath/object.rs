//! Programs and maps taken out of the loaded object by name, with errors that name them.
//! One place for it: the TC observers, the cgroup hooks, the harvester, the clock and the
//! process attribution all look their pieces up the same way.

use aya::{
    maps::{Map, MapError},
    programs::{Program, ProgramError},
    Ebpf,
};

use super::DatapathError;

/// The program `name`, as its concrete type (`SchedClassifier`, `CgroupSockAddr`...).
pub(crate) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(load_err(name))
}

/// For `load()`/`attach()` results of program `program`.
pub(crate) fn load_err(program: &'static str) -> impl Fn(ProgramError) -> DatapathError {
    move |source| DatapathError::Load { program, source }
}

/// Take map `name` out of the object, as the typed handle `T` (`RingBuf`, `HashMap`...):
/// its reader becomes its only owner.
pub(crate) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = take_raw_map(ebpf, name)?;
    T::try_from(map).map_err(map_err(name))
}

/// As [`take_map`], untyped (for raw syscalls on the map's fd).
pub(crate) fn take_raw_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

/// For results of operations on map `map`.
pub(crate) fn map_err(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}
