// Shows one study's SM series and every ANN series in dicom-microscopy-viewer, the way Slim
// does, and reports what it drew in window.__result for the test.
//
// Orthanc 1.10 writes OF and OD elements (Point Coordinates Data, Floating Point Values) in its
// DICOM JSON metadata as a one-number "Value" (its JSON writer reads them like FL with VM 1), so
// the viewer would draw nothing. Orthanc's WADO-RS bulk-data resource for the same element
// (.../instances/{uid}/bulk/{tag}/{item}/{tag}) returns the whole value, so such elements are
// handed to the viewer as a BulkDataURI there, as the standard's JSON model allows.
// Orthanc also writes its bulk-data URIs with its own host (DicomWeb.Host), not the proxy's:
// they are resolved against this page's origin, as a site's proxy would rewrite them.
const dmv = window.dicomMicroscopyViewer
const params = new URLSearchParams(window.location.search)
const study = params.get('study')
const root = `${window.location.origin}/dicom-web`
const client = new DICOMwebClient.api.DICOMwebClient({ url: root })
const state = { frames: 0, frameErrors: 0, featureLoads: 0, errors: [], groups: [], annotations: 0 }
window.__state = state

function sameOrigin(metadata) {
  const walk = (dataset) => {
    for (const element of Object.values(dataset)) {
      if (element.vr === 'SQ' && Array.isArray(element.Value)) element.Value.forEach(walk)
      else if (typeof element.BulkDataURI === 'string') {
        const uri = new URL(element.BulkDataURI, window.location.origin)
        element.BulkDataURI = `${window.location.origin}${uri.pathname}${uri.search}`
      }
    }
  }
  walk(metadata)
  return metadata
}

function bulkDataForFloats(metadata) {
  const base = `${root}/studies/${metadata['0020000D'].Value[0]}` +
    `/series/${metadata['0020000E'].Value[0]}/instances/${metadata['00080018'].Value[0]}/bulk`
  let replaced = 0
  const walk = (dataset, path) => {
    for (const tag of Object.keys(dataset)) {
      const element = dataset[tag]
      if (element.vr === 'SQ' && Array.isArray(element.Value)) {
        element.Value.forEach((item, i) => walk(item, `${path}/${tag}/${i}`))
      } else if (['OF', 'OD', 'OL', 'OV'].includes(element.vr) && 'Value' in element) {
        dataset[tag] = { vr: element.vr, BulkDataURI: `${base}${path}/${tag}` }
        replaced += 1
      }
    }
  }
  walk(metadata, '')
  return replaced
}

async function main() {
  const container = document.getElementById('viewer')
  const E = dmv.events.EVENTS || dmv.events
  container.addEventListener('dicommicroscopyviewer_frame_loading_ended', () => { state.frames += 1 })
  container.addEventListener('dicommicroscopyviewer_frame_loading_error', () => { state.frameErrors += 1 })
  container.addEventListener('dicommicroscopyviewer_loading_ended', () => { state.featureLoads += 1 })
  const series = await client.searchForSeries({ studyInstanceUID: study })
  const modality = (s) => s['00080060'].Value[0]
  const uid = (s) => s['0020000E'].Value[0]
  const sm = series.filter((s) => modality(s) === 'SM')
  const ann = series.filter((s) => modality(s) === 'ANN')
  const images = []
  for (const s of sm) {
    const metadata = await client.retrieveSeriesMetadata({ studyInstanceUID: study, seriesInstanceUID: uid(s) })
    for (const m of metadata) images.push(new dmv.metadata.VLWholeSlideMicroscopyImage({ metadata: sameOrigin(m) }))
  }
  const viewer = new dmv.viewer.VolumeImageViewer({
    client,
    metadata: images,
    // Boxes, not clusters, at every zoom: the test looks for the boxes themselves.
    annotationOptions: { clusteringPixelSizeThreshold: 1e9 },
    // The whole slide fitted to the viewport (no snapping to a level's zoom, which crops).
    useTileGridResolutions: false,
    errorInterceptor: (error) => { state.errors.push(String(error && error.message || error)); return error },
  })
  viewer.render({ container })
  window.__viewer = viewer
  state.rotationDegrees = images.length ? dmv.utils.computeRotation({ orientation: images[0].ImageOrientationSlide, inDegrees: true }) + 90 : null
  for (const s of ann) {
    for (const m of await client.retrieveSeriesMetadata({ studyInstanceUID: study, seriesInstanceUID: uid(s) })) {
      state.replacedFloatElements = (state.replacedFloatElements || 0) + bulkDataForFloats(sameOrigin(m))
      const annotations = new dmv.metadata.MicroscopyBulkSimpleAnnotations({ metadata: m })
      viewer.addAnnotationGroups(annotations)
      for (const group of annotations.AnnotationGroupSequence) {
        state.groups.push({ uid: group.AnnotationGroupUID, label: group.AnnotationGroupLabel, n: Number(group.NumberOfAnnotations) })
        state.annotations += Number(group.NumberOfAnnotations)
        viewer.showAnnotationGroup(group.AnnotationGroupUID, { color: [255, 0, 255], opacity: 1 })
      }
    }
  }
  state.ready = true
}

main().catch((error) => { state.errors.push(`main: ${error && error.stack || error}`); state.ready = true })
