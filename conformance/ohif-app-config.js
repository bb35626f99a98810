/* OHIF 3.13 app-config.js for conformance/ohif.sh; the three roots are rewritten to the
 * cloudpacs under test. Keys: docs.ohif.org, Configuration > DataSources > DICOMweb. */
window.config = {
  routerBasename: null,
  showStudyList: true,
  extensions: [],
  modes: [],
  customizationService: {},
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'dicomweb',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'cloudpacs',
        name: 'cloudpacs',
        qidoRoot: 'http://127.0.0.1:18080/dicom-web',
        wadoRoot: 'http://127.0.0.1:18080/dicom-web',
        wadoUriRoot: 'http://127.0.0.1:18080/dicom-web',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
